//! Wallet passes of the card (issue 13): the `.pkpass` downloaded through the member's card
//! link, unzipped and checked structurally (manifest hashes against the files, `pass.json`'s
//! balance against the status), made anew at every download (the refresh), unsigned without a
//! certificate and signed with one; the Google Wallet link a 503 page unless configured, else
//! a 303 to a save link whose JWT carries the balance. Forged and expired links are 403.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use loyalty_core::identity;
use loyalty_core::ports::StateStore;
use loyalty_domain::{FranchiseId, MemberId};
use loyalty_tests::{spawn_app, spawn_app_with, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::Value;
use sha1::{Digest, Sha1};

/// The test-only keys and certificates of libs/wallet.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../libs/wallet/tests/fixtures")
        .join(name)
}

/// A member of `f` with a purchase, and the URL of their card.
async fn member_with_card(app: &TestApp, f: &TestFranchise, phone: &str) -> (String, String) {
    let m = app.enrol_id(f, phone).await;
    assert_eq!(
        app.purchase(f, &format!("w-{m}-1"), &m, 1250)
            .await
            .status(),
        StatusCode::OK
    );
    let r = app
        .get(&format!("/v1/members/{m}/card-link"), &f.store_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let link: Value = r.json().await.unwrap();
    (m, link["url"].as_str().unwrap().to_owned())
}

/// `url` of a card with `/{leaf}` added to its path.
fn beside(card_url: &str, leaf: &str) -> String {
    let (path, query) = card_url.split_once('?').unwrap();
    format!("{path}/{leaf}?{query}")
}

/// A client that does not follow redirects (the Google link is a 303 away).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `.pkpass` of a card link, unzipped by file name.
async fn download_pass(url: &str) -> BTreeMap<String, Vec<u8>> {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/vnd.apple.pkpass");
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    let bytes = r.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let mut content = Vec::new();
        f.read_to_end(&mut content).unwrap();
        files.insert(f.name().unwrap().into_owned(), content);
    }
    // The manifest names every other file but the signature, with its SHA-1.
    let manifest: BTreeMap<String, String> =
        serde_json::from_slice(&files["manifest.json"]).unwrap();
    let hashed: Vec<&String> = files
        .keys()
        .filter(|n| *n != "manifest.json" && *n != "signature")
        .collect();
    assert_eq!(manifest.keys().collect::<Vec<_>>(), hashed);
    for (name, hash) in &manifest {
        assert_eq!(
            &data_encoding::HEXLOWER.encode(&Sha1::digest(&files[name])),
            hash,
            "{name}"
        );
    }
    files
}

fn pass_json(files: &BTreeMap<String, Vec<u8>>) -> Value {
    serde_json::from_slice(&files["pass.json"]).unwrap()
}

async fn qr_token(app: &TestApp, f: &TestFranchise, m: &str) -> String {
    let secret = app
        .store
        .franchise(&FranchiseId::parse(&f.id).unwrap())
        .await
        .unwrap()
        .unwrap()
        .secret;
    identity::qr_token(&secret, &MemberId::parse(m).unwrap())
}

#[tokio::test]
async fn the_card_link_downloads_an_unsigned_pass_of_the_current_balance() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let (m, url) = member_with_card(&app, &f, "+33633333333").await;
    let points = app.status(&f, &m).await["points"].as_u64().unwrap();

    let files = download_pass(&beside(&url, "pass.pkpass")).await;
    assert!(!files.contains_key("signature"), "no certificate: unsigned");
    for image in ["icon.png", "icon@2x.png", "logo.png"] {
        assert!(files[image].starts_with(b"\x89PNG"), "{image}");
    }
    let pass = pass_json(&files);
    assert_eq!(pass["formatVersion"], 1);
    assert_eq!(pass["serialNumber"], m.as_str());
    assert_eq!(pass["organizationName"], "Café Lumière");
    assert_eq!(pass["storeCard"]["primaryFields"][0]["value"], points);
    assert_eq!(pass["storeCard"]["secondaryFields"][0]["value"], "Bronze");
    assert_eq!(pass["barcodes"][0]["format"], "PKBarcodeFormatQR");
    assert_eq!(pass["barcodes"][0]["message"], qr_token(&app, &f, &m).await);

    // Refresh: another purchase, downloaded again, shows the new balance.
    assert_eq!(
        app.purchase(&f, "w-2", &m, 2000).await.status(),
        StatusCode::OK
    );
    let now = app.status(&f, &m).await["points"].as_u64().unwrap();
    assert!(now > points);
    let again =
        pass_json(&download_pass(&format!("{}&lang=en", beside(&url, "pass.pkpass"))).await);
    assert_eq!(again["storeCard"]["primaryFields"][0]["value"], now);

    // Google Wallet is not configured: a page that says so. The card page offers neither
    // wallet (Apple's needs a signed pass).
    let r = client()
        .get(beside(&url, "google-wallet"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("Google Wallet"));
    let page = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("id=\"wallets\""), "{page}");

    // Forged and expired links are refused like the card page's.
    let (path, query) = url.split_once('?').unwrap();
    let forged = query.replace("sig=", "sig=0");
    let past = identity::card_link_signature(
        &app.store
            .franchise(&FranchiseId::parse(&f.id).unwrap())
            .await
            .unwrap()
            .unwrap()
            .secret,
        &MemberId::parse(&m).unwrap(),
        1_000_000,
    );
    for leaf in ["pass.pkpass", "google-wallet"] {
        for (q, why) in [
            (forged.clone(), "forged"),
            (format!("expires=1000000&sig={past}"), "expired"),
        ] {
            let r = client()
                .get(format!("{path}/{leaf}?{q}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{leaf} {why}");
            assert!(r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"));
        }
    }
}

#[tokio::test]
async fn configured_wallets_sign_the_pass_and_redirect_to_a_google_save_link() {
    let app = spawn_app_with(|c| {
        c.apple_pass_type_id = Some("pass.org.example.loyalty".into());
        c.apple_team_id = Some("TESTTEAM01".into());
        c.apple_cert_pem = Some(fixture("pass-cert.pem"));
        c.apple_key_pem = Some(fixture("pass-key.pem"));
        c.apple_wwdr_pem = Some(fixture("wwdr.pem"));
        c.google_wallet_issuer_id = Some("3388000000012345678".into());
        c.google_wallet_class_id = Some("loyalty_card".into());
        c.google_wallet_service_account = Some("wallet@example.iam.gserviceaccount.com".into());
        c.google_wallet_key_pem = Some(fixture("google-key.pem"));
    })
    .await;
    let f = app.franchise("Café Lumière").await;
    let (m, url) = member_with_card(&app, &f, "+33644444444").await;
    let points = app.status(&f, &m).await["points"].as_u64().unwrap();

    let files = download_pass(&beside(&url, "pass.pkpass")).await;
    assert!(
        files["signature"].len() > 1000,
        "a CMS SignedData with two certificates"
    );
    let pass = pass_json(&files);
    assert_eq!(pass["teamIdentifier"], "TESTTEAM01");
    assert_eq!(pass["storeCard"]["primaryFields"][0]["value"], points);

    // The card page links both wallets, relative to the card.
    let page = client()
        .get(format!("{url}&lang=en"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Add to Apple Wallet") && page.contains("Save to Google Wallet"));
    let query = url.split_once('?').unwrap().1;
    assert!(
        page.contains(&format!(
            "href=\"{m}/pass.pkpass?{}",
            query.replace('&', "&amp;")
        )),
        "{page}"
    );

    let r = client()
        .get(beside(&url, "google-wallet"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"].to_str().unwrap();
    let jwt = location
        .strip_prefix("https://pay.google.com/gp/v/save/")
        .unwrap();
    let claims = jwt.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &data_encoding::BASE64URL_NOPAD
            .decode(claims.as_bytes())
            .unwrap(),
    )
    .unwrap();
    let object = &claims["payload"]["loyaltyObjects"][0];
    assert_eq!(object["loyaltyPoints"]["balance"]["int"], points);
    assert_eq!(object["barcode"]["value"], qr_token(&app, &f, &m).await);
    assert_eq!(object["classId"], "3388000000012345678.loyalty_card");

    // Counted by kind and result.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "loyalty_wallet_passes_total{kind=\"apple\",result=\"signed\"}",
        "loyalty_wallet_passes_total{kind=\"google\",result=\"signed\"}",
    ] {
        assert!(metrics.contains(line), "{line}");
    }
}
