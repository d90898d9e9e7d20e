//! Personal data at rest (README "Personal data at rest"; issue 14, defect 11): an enrolment's
//! phone, name, birthday and e-mail address, and an address given with a change of consent,
//! are nowhere in clear in the data directory (the command log, the store), while the API
//! still shows them to those allowed; and a key ring rotated with `loyalty privacy reseal`
//! keeps every member readable once the old key is dropped.

use std::path::Path;
use std::process::Command;

use loyalty_core::ports::StateStore;
use loyalty_core::sealing::KeyRing;
use loyalty_tests::{loyalty_bin, spawn_app_with, DevProcess};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PHONE: &str = "+33687650199";
const NAME: &str = "Quillonne";
const BIRTHDAY: &str = "1979-11-23";
const EMAIL: &str = "quillonne.at.rest@example.org";
const NEW_EMAIL: &str = "quillonne.moved@example.net";

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)
            .expect("a readable directory")
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p.display().to_string(), bytes));
            }
        }
    }
    out
}

fn contains(bytes: &[u8], s: &str) -> bool {
    bytes.windows(s.len()).any(|w| w == s.as_bytes())
}

/// The clear values found in the files under `dir`, with the file.
fn clear_values(dir: &Path, values: &[&str]) -> Vec<String> {
    files(dir)
        .iter()
        .flat_map(|(name, bytes)| {
            values
                .iter()
                .filter(|v| contains(bytes, v))
                .map(move |v| format!("{v} in {name}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolments_and_addresses_are_sealed_in_every_file_of_the_data_directory() {
    let spec = KeyRing::new_key_spec("e2e").unwrap();
    let app = spawn_app_with(|c| c.pii_keys = Some(spec.clone())).await;
    let f = app.franchise("Sealed at rest").await;
    let r = app
        .post(
            "/v1/members?wait_ms=5000",
            &f.store_key,
            &json!({"phone": PHONE, "name": NAME, "birthday": BIRTHDAY,
                    "consent": {"sms": true, "email": true}, "email": EMAIL}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let member = r.json::<Value>().await.unwrap()["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .put(
            &format!("/v1/members/{member}/consent?wait_ms=5000"),
            &f.store_key,
            &json!({"event_id": "sealed-consent-1", "email_address": NEW_EMAIL}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());

    // Those allowed still read it in clear.
    let r = app
        .get(&format!("/v1/members/{member}/export"), &f.hq_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let export: Value = r.json().await.unwrap();
    assert_eq!(export["profile"]["phone"], PHONE);
    assert_eq!(export["profile"]["name"], NAME);
    assert_eq!(export["profile"]["birthday"], BIRTHDAY);
    assert_eq!(export["profile"]["email"], NEW_EMAIL);
    let r = app
        .get(
            &format!("/v1/members/lookup?phone={}", PHONE.replace('+', "%2B")),
            &f.store_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "found by phone: a keyed hash");

    // Durable, then nowhere in clear: not in the log's records (the enrolment, the consent
    // change), not in the store.
    app.store.sync().await.unwrap();
    let found = clear_values(
        app.data_dir.path(),
        &[PHONE, &PHONE[1..], NAME, BIRTHDAY, EMAIL, NEW_EMAIL],
    );
    assert!(found.is_empty(), "personal data in clear: {found:?}");
    // And sealed there, not missing: both the log and the store hold values of the key.
    let marker = "\"sealed\":\"v1.e2e.";
    let sealed_in: Vec<String> = files(app.data_dir.path())
        .into_iter()
        .filter(|(_, b)| contains(b, marker))
        .map(|(n, _)| n)
        .collect();
    for part in ["/log/", "/store/"] {
        assert!(
            sealed_in.iter().any(|n| n.contains(part)),
            "no sealed value under {part}: {sealed_in:?}"
        );
    }
}

/// `loyalty privacy reseal` with `args` and `keys`; its output.
fn reseal(data_dir: &Path, keys: &str) -> String {
    let out = Command::new(loyalty_bin().unwrap())
        .args(["privacy", "reseal", "--data-dir"])
        .arg(data_dir)
        .env("LOYALTY_PII_KEYS", keys)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reseal failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ring_reads_old_members_and_after_a_reseal_the_old_key_can_go() {
    let (k1, k2) = (
        KeyRing::new_key_spec("2026-06").unwrap(),
        KeyRing::new_key_spec("2026-12").unwrap(),
    );
    let data = tempfile::tempdir().unwrap();
    let start = |keys: String| {
        let dir = data.path().to_path_buf();
        async move {
            DevProcess::start_with(&dir, |c| {
                c.env("LOYALTY_DEMO_HISTORY", "false")
                    .env("LOYALTY_PII_KEYS", keys);
            })
            .await
            .unwrap()
        }
    };
    let client = reqwest::Client::new();
    let dev = start(k1.clone()).await;
    let r = client
        .post(format!("{}/v1/members?wait_ms=5000", dev.address))
        .bearer_auth(dev.key("STORE1_KEY"))
        .json(&json!({"phone": PHONE, "name": NAME, "birthday": BIRTHDAY}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let member = r.json::<Value>().await.unwrap()["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(dev.stop().unwrap(), "loyalty dev exits 0 on SIGTERM");

    // The new key first, the old one kept: every member is written again under the new one.
    let said = reseal(data.path(), &format!("{k2},{k1}"));
    assert!(
        said.contains("resealed 1 members under the key `2026-12`"),
        "{said}"
    );

    // The old key dropped: the member reads whole, by id and by phone.
    let dev = start(k2).await;
    let r = client
        .get(format!("{}/v1/members/{member}/export", dev.address))
        .bearer_auth(dev.key("HQ_KEY"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let export: Value = r.json().await.unwrap();
    assert_eq!(export["profile"]["name"], NAME);
    assert_eq!(export["profile"]["birthday"], BIRTHDAY);
    let r = client
        .get(format!(
            "{}/v1/members/lookup?phone={}",
            dev.address,
            PHONE.replace('+', "%2B")
        ))
        .bearer_auth(dev.key("STORE1_KEY"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(dev.stop().unwrap());
}
