//! The card page's "My data" section (issue 13, README "Privacy"): the download, authorised by
//! the card link, is the HQ export; the erasure asked from the card (confirmation form) is the
//! HQ route's command: the status and the export then show the member erased, the card link
//! leads to no card, and a forged link or a cross-site post erases nothing.

use loyalty_tests::{spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The path and query of a fresh card link of `member`.
async fn card_path(app: &TestApp, key: &str, member: &str) -> String {
    let r = app
        .get(&format!("/v1/members/{member}/card-link"), key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let link: Value = r.json().await.unwrap();
    let url = link["url"].as_str().unwrap();
    url.strip_prefix(&app.address).unwrap().to_owned()
}

/// `/card/f/m?q` as `/card/f/m/<what>?q`.
fn sub(card: &str, what: &str) -> String {
    let (path, q) = card.split_once('?').unwrap();
    format!("{path}/{what}?{q}")
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    client()
        .get(app.url(path))
        .header("accept-language", "en")
        .send()
        .await
        .unwrap()
}

async fn post_erase(app: &TestApp, card: &str, body: &str, site: &str) -> reqwest::Response {
    client()
        .post(app.url(&sub(card, "erase")))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", site)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// An export without the moment it was made.
fn without_time(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("exported_at");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_downloads_the_hq_export_and_erases_the_member() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let member = app.enrol_id(&f, "+33614141414").await;
    assert!(app
        .purchase(&f, "data-p1", &member, 900)
        .await
        .status()
        .is_success());
    let card = card_path(&app, &f.store_key, &member).await;

    let page = get(&app, &card).await.text().await.unwrap();
    assert!(page.contains("id=\"my-data\""), "{page}");
    assert!(page.contains("Download my data"));
    assert!(
        page.contains(&sub(&card, "export").replace('&', "&amp;")),
        "{page}"
    );

    // The download is the HQ export.
    let r = get(&app, &sub(&card, "export")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let mine: Value = r.json().await.unwrap();
    let hq: Value = app
        .get(&format!("/v1/members/{member}/export"), &f.hq_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(without_time(mine), without_time(hq.clone()));
    assert_eq!(hq["profile"]["phone"], "+33614141414");

    // A forged link exports nothing and erases nothing.
    let forged = card.replace("sig=", "sig=A");
    assert_eq!(
        get(&app, &sub(&forged, "export")).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = post_erase(&app, &forged, "confirm=yes", "same-origin").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Cross-site, or without the ticked box: nothing either.
    let r = post_erase(&app, &card, "confirm=yes", "cross-site").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post_erase(&app, &card, "lang=en", "same-origin").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("Tick the box"));
    assert_ne!(
        app.status(&f, &member).await["erased"],
        true,
        "still a member"
    );
    assert!(get(&app, &card).await.status().is_success());

    // The confirmation form, then the erasure.
    let r = get(&app, &sub(&card, "erase")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let form = r.text().await.unwrap();
    assert!(form.contains("id=\"erase-form\""), "{form}");
    let r = post_erase(&app, &card, "confirm=yes&lang=en", "same-origin").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("has been erased"));

    let hq: Value = app
        .get(&format!("/v1/members/{member}/export"), &f.hq_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(hq["erased"], true, "{hq}");
    assert_eq!(hq["profile"]["phone"], Value::Null);
    assert_eq!(app.status(&f, &member).await["erased"], true);
    // The card, its download and its form lead to no card any more.
    assert_eq!(get(&app, &card).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        get(&app, &sub(&card, "export")).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = post_erase(&app, &card, "confirm=yes", "same-origin").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The HQ erasure is now a replay of the card's: one command, `erase.<member>`.
    let r = app
        .post(
            &format!("/v1/members/{member}/erasure?wait_ms=5000"),
            &f.hq_key,
            &serde_json::json!({}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replayed"], true, "{v}");
    assert_eq!(v["event_id"], format!("erase.{member}"));
}
