//! API keys through the API: listed without their secrets, created, rotated (the old secret
//! stops working) and revoked (for ever), by HQ for its franchise and by the admin for any;
//! a read-only HQ key that reads everything HQ reads and changes nothing; and revocation on
//! every gateway: at once on the one that revoked, within `PRINCIPAL_TTL` on another gateway
//! over the same store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loyalty::configuration::DevConfig;
use loyalty::startup::{Application, Mode, Ports};
use loyalty_core::identity::hash_api_key;
use loyalty_core::ports::{EventLog, HotCache, StateStore};
use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `PRINCIPAL_TTL` of the gateway (libs/gateway/src/state.rs), which README documents.
const PRINCIPAL_TTL: Duration = Duration::from_secs(1);

async fn json_of(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{v}");
    v
}

/// The franchise's keys, as HQ lists them (the raw body too).
async fn list(app: &TestApp, f: &TestFranchise, key: &str) -> (Vec<Value>, String) {
    let r = app
        .get(&format!("/v1/franchises/{}/api-keys", f.id), key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    (v["keys"].as_array().unwrap().clone(), text)
}

/// A request that any valid store key may make: 200 for a key, 401 for none.
async fn as_store(app: &TestApp, key: &str, member: &str) -> StatusCode {
    app.get(&format!("/v1/members/{member}"), key)
        .await
        .status()
}

fn counter(metrics: &str, operation: &str, role: &str) -> u64 {
    let series =
        format!("loyalty_api_key_operations_total{{operation=\"{operation}\",role=\"{role}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_created_rotated_and_revoked_at_once() {
    let app = spawn_app().await;
    let f = app.franchise("Keys").await;
    let other = app.franchise("Other").await;
    let m = app.enrol(&f, "+33612340001").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = metrics(&app).await;

    // Listed: the HQ key and the store key, no secret, no hash.
    let (keys, text) = list(&app, &f, &f.hq_key).await;
    assert_eq!(keys.len(), 2, "{text}");
    for secret in [&f.hq_key, &f.store_key] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret is listed: {text}"
        );
        assert!(
            !text.contains(&hash_api_key(secret)),
            "a hash is listed: {text}"
        );
    }
    let store_entry = keys.iter().find(|k| k["role"] == "store").unwrap();
    assert_eq!(store_entry["store_id"], f.store_id.as_str());
    assert!(f
        .store_key
        .starts_with(store_entry["prefix"].as_str().unwrap()));
    assert_eq!(store_entry["active"], true);
    // A store key may not list them; another franchise does not see them.
    let r = app
        .get(&format!("/v1/franchises/{}/api-keys", f.id), &f.store_key)
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .get(&format!("/v1/franchises/{}/api-keys", f.id), &other.hq_key)
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;

    // A second key for the store, shown once.
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({"role": "store", "store_id": f.store_id}),
        )
        .await;
    assert_eq!(
        r.headers().get("cache-control").unwrap(),
        "no-store",
        "a secret must not be cached"
    );
    let created = json_of(r, StatusCode::CREATED).await;
    let kid = created["id"].as_str().unwrap().to_owned();
    let key1 = created["api_key"].as_str().unwrap().to_owned();
    assert!(key1.starts_with("lk_store_"));
    assert_eq!(as_store(&app, &key1, &m).await, StatusCode::OK);
    let r = app
        .get(
            &format!("/v1/franchises/{}/api-keys/{kid}", f.id),
            &f.hq_key,
        )
        .await;
    let one = json_of(r, StatusCode::OK).await;
    assert!(
        one.get("api_key").is_none() && one["id"] == kid.as_str(),
        "{one}"
    );
    // A store of another franchise, or none, is refused.
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({"role": "store", "store_id": other.store_id}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({"role": "store"}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;

    // Rotation: the very next request with the old secret is 401, the new one works.
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys/{kid}/rotate", f.id),
            &f.hq_key,
            &json!({}),
        )
        .await;
    let rotated = json_of(r, StatusCode::OK).await;
    let key2 = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(key1, key2);
    assert_eq!(rotated["id"], kid.as_str(), "a rotation keeps the id");
    assert!(rotated["rotated_at"].is_i64());
    assert_eq!(as_store(&app, &key1, &m).await, StatusCode::UNAUTHORIZED);
    assert_eq!(as_store(&app, &key2, &m).await, StatusCode::OK);

    // Another franchise's HQ can neither rotate nor revoke it.
    for (method, path) in [
        (
            "POST",
            format!("/v1/franchises/{}/api-keys/{kid}/rotate", f.id),
        ),
        (
            "POST",
            format!("/v1/franchises/{}/api-keys/{kid}/revoke", f.id),
        ),
        (
            "POST",
            format!("/v1/franchises/{}/api-keys/{kid}/revoke", other.id),
        ),
    ] {
        let r = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&other.hq_key)
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    }
    assert_eq!(as_store(&app, &key2, &m).await, StatusCode::OK);

    // Revocation: the very next request is 401; the key stays listed, revoked.
    let r = app
        .client
        .post(app.url(&format!("/v1/franchises/{}/api-keys/{kid}/revoke", f.id)))
        .bearer_auth(&f.hq_key)
        .send()
        .await
        .unwrap();
    let revoked = json_of(r, StatusCode::OK).await;
    assert_eq!(revoked["active"], false);
    assert!(revoked["revoked_at"].is_i64());
    assert_eq!(as_store(&app, &key2, &m).await, StatusCode::UNAUTHORIZED);
    assert_eq!(as_store(&app, &f.store_key, &m).await, StatusCode::OK);
    let (keys, _) = list(&app, &f, &f.hq_key).await;
    assert_eq!(keys.len(), 3);
    assert_eq!(
        keys.iter().find(|k| k["id"] == kid.as_str()).unwrap()["active"],
        false
    );
    // For ever: a rotation of a revoked key is refused, a second revocation changes nothing.
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys/{kid}/rotate", f.id),
            &f.hq_key,
            &json!({}),
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "key-conflict").await;
    let r = app
        .client
        .post(app.url(&format!("/v1/franchises/{}/api-keys/{kid}/revoke", f.id)))
        .bearer_auth(&f.hq_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(r, StatusCode::OK).await["revoked_at"],
        revoked["revoked_at"]
    );
    assert_eq!(as_store(&app, &key2, &m).await, StatusCode::UNAUTHORIZED);

    // HQ keys: HQ may not make one, nor revoke another; the admin may.
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({"role": "hq"}),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            ADMIN_KEY,
            &json!({"role": "hq"}),
        )
        .await;
    let second_hq = json_of(r, StatusCode::CREATED).await;
    let second_id = second_hq["id"].as_str().unwrap();
    let second_key = second_hq["api_key"].as_str().unwrap();
    let r = app
        .client
        .post(app.url(&format!(
            "/v1/franchises/{}/api-keys/{second_id}/revoke",
            f.id
        )))
        .bearer_auth(&f.hq_key)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .client
        .post(app.url(&format!(
            "/v1/franchises/{}/api-keys/{second_id}/revoke",
            f.id
        )))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    json_of(r, StatusCode::OK).await;
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), second_key)
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // HQ rotates its own key: the old one is 401 at once, the new one is HQ.
    let own = keys.iter().find(|k| k["role"] == "hq").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys/{own}/rotate", f.id),
            &f.hq_key,
            &json!({}),
        )
        .await;
    let new_hq = json_of(r, StatusCode::OK).await["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &new_hq)
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Counted, by operation and role.
    let after = metrics(&app).await;
    for (op, role, n) in [
        ("create", "store", 1),
        ("rotate", "store", 1),
        ("revoke", "store", 1),
        ("create", "hq", 1),
        ("revoke", "hq", 1),
        ("rotate", "hq", 1),
    ] {
        assert_eq!(
            counter(&after, op, role) - counter(&before, op, role),
            n,
            "{op} {role}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_hq_key_reads_everything_hq_reads_and_changes_nothing() {
    let app = spawn_app().await;
    let f = app.franchise("Readers").await;
    let m = app.enrol(&f, "+33612340002").await;
    let member = m["member_id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({"role": "hq_read_only"}),
        )
        .await;
    let ro = json_of(r, StatusCode::CREATED).await;
    let key = ro["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("lk_hqro_"), "{key}");
    assert_eq!(ro["role"], "hq_read_only");
    let fid = &f.id;
    let today = loyalty_core::provisioning::now().day().iso();
    for path in [
        format!("/v1/franchises/{fid}/program"),
        format!("/v1/franchises/{fid}/dashboard?from={today}&to={today}"),
        format!("/v1/franchises/{fid}/dashboard.csv?from={today}&to={today}"),
        format!("/v1/franchises/{fid}/api-keys"),
        format!("/v1/members/{member}"),
        format!("/v1/members/{member}/ledger"),
        "/v1/members/lookup?phone=%2B33612340002".to_owned(),
    ] {
        let r = app.get(&path, &key).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let program = json_of(
        app.get(&format!("/v1/franchises/{fid}/program"), &key)
            .await,
        StatusCode::OK,
    )
    .await;
    // Every write is 403, whatever the body (checked before it is read) and the route.
    let store_kid = json_of(
        app.get(&format!("/v1/franchises/{fid}/api-keys"), &key)
            .await,
        StatusCode::OK,
    )
    .await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "store")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let writes = [
        (
            "PUT",
            format!("/v1/franchises/{fid}/program"),
            json!({"program": program["program"]}),
        ),
        (
            "POST",
            format!("/v1/franchises/{fid}/stores"),
            json!({"name": "Nope"}),
        ),
        (
            "POST",
            format!("/v1/franchises/{fid}/api-keys"),
            json!({"role": "hq_read_only"}),
        ),
        (
            "POST",
            format!("/v1/franchises/{fid}/api-keys/{store_kid}/rotate"),
            json!({}),
        ),
        (
            "POST",
            format!("/v1/franchises/{fid}/api-keys/{store_kid}/revoke"),
            json!({}),
        ),
        (
            "POST",
            "/v1/members".to_owned(),
            json!({"phone": "+33612340003"}),
        ),
        (
            "POST",
            "/v1/purchases".to_owned(),
            json!({"event_id": "ro-1", "member_id": member, "amount_cents": 100, "currency": "EUR"}),
        ),
        (
            "POST",
            "/v1/franchises".to_owned(),
            json!("not even an object"),
        ),
    ];
    for (method, path, body) in writes {
        let r = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let p = assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
        assert!(
            p["detail"].as_str().unwrap().contains("read-only"),
            "{method} {path}: {p}"
        );
    }
    // A secret that lets one act as a store is not for a reader either.
    let r = app
        .get(
            &format!(
                "/v1/franchises/{fid}/stores/{}/pos-signing-secret",
                f.store_id
            ),
            &key,
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    // Nothing changed: the program version, the keys, the member.
    let now = json_of(
        app.get(&format!("/v1/franchises/{fid}/program"), &f.hq_key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(now["program_version"], 1);
    let (keys, _) = list(&app, &f, &f.hq_key).await;
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k["active"] == true));
    assert_eq!(as_store(&app, &f.store_key, member).await, StatusCode::OK);
    assert_eq!(app.status(&f, member).await["points"], 50);
}

/// A second gateway over the same store (what a second `loyalty gateway` process over the
/// shared store is): its own principal cache.
async fn second_gateway(app: &TestApp) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        admin_key: ADMIN_KEY.into(),
        partitions: 4,
        http_workers: 1,
        demo: false,
        ..DevConfig::default()
    };
    let ports = Ports {
        log: Arc::clone(&app.log) as Arc<dyn EventLog>,
        store: Arc::clone(&app.store) as Arc<dyn StateStore>,
        cache: Arc::clone(&app.cache) as Arc<dyn HotCache>,
    };
    let gw = Application::build_with(config, ports, None, Mode::Gateway)
        .await
        .expect("second gateway starts");
    let address = format!("http://127.0.0.1:{}", gw.port());
    tokio::spawn(gw.run_until_stopped());
    std::mem::forget(dir);
    address
}

/// Polls `url` with `key` until it answers 401; returns how long that took.
async fn until_refused(client: &reqwest::Client, url: &str, key: &str) -> Duration {
    let start = Instant::now();
    let deadline = start + PRINCIPAL_TTL * 5;
    loop {
        let s = client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status();
        if s == StatusCode::UNAUTHORIZED {
            return start.elapsed();
        }
        assert_eq!(s, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "{url} still takes the key after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_on_every_gateway_within_the_ttl() {
    let app = spawn_app().await;
    let other = second_gateway(&app).await;
    let f = app.franchise("Two gateways").await;
    let member = app.enrol(&f, "+33612340004").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/members/{member}");
    let on_other = format!("{other}{path}");
    let client = reqwest::Client::new();
    let (keys, _) = list(&app, &f, &f.hq_key).await;
    let kid = keys.iter().find(|k| k["role"] == "store").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Both gateways know the key (the other one has it in its cache now).
    let ok = |s: StatusCode| assert_eq!(s, StatusCode::OK);
    ok(as_store(&app, &f.store_key, &member).await);
    ok(client
        .get(&on_other)
        .bearer_auth(&f.store_key)
        .send()
        .await
        .unwrap()
        .status());

    // Rotated through the first: at once there, within the TTL on the other.
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys/{kid}/rotate", f.id),
            &f.hq_key,
            &json!({}),
        )
        .await;
    let rotated_at = Instant::now();
    let key2 = json_of(r, StatusCode::OK).await["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        as_store(&app, &f.store_key, &member).await,
        StatusCode::UNAUTHORIZED
    );
    ok(client
        .get(&on_other)
        .bearer_auth(&key2)
        .send()
        .await
        .unwrap()
        .status());
    until_refused(&client, &on_other, &f.store_key).await;
    assert!(
        rotated_at.elapsed() <= PRINCIPAL_TTL + Duration::from_millis(500),
        "the old secret worked on the other gateway for {:?}",
        rotated_at.elapsed()
    );

    // Revoked through the other gateway: at once there, within the TTL on the first.
    ok(as_store(&app, &key2, &member).await);
    let r = client
        .post(format!(
            "{other}/v1/franchises/{}/api-keys/{kid}/revoke",
            f.id
        ))
        .bearer_auth(&f.hq_key)
        .send()
        .await
        .unwrap();
    let revoked_at = Instant::now();
    json_of(r, StatusCode::OK).await;
    assert_eq!(
        client
            .get(&on_other)
            .bearer_auth(&key2)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED,
        "the very next request on the gateway that revoked"
    );
    until_refused(&app.client, &app.url(&path), &key2).await;
    assert!(
        revoked_at.elapsed() <= PRINCIPAL_TTL + Duration::from_millis(500),
        "the revoked key worked on the first gateway for {:?}",
        revoked_at.elapsed()
    );
    // And stays refused on both.
    assert_eq!(
        as_store(&app, &key2, &member).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client
            .get(&on_other)
            .bearer_auth(&key2)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

/// `GET {gateway}/v1/franchises/{fid}/program` with `key`: the status.
async fn program_status(client: &reqwest::Client, gateway: &str, fid: &str, key: &str) -> u16 {
    client
        .get(format!("{gateway}/v1/franchises/{fid}/program"))
        .bearer_auth(key)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Real `loyalty gateway` processes sharing Redis: a key revoked through one is refused by the
/// other at once, by the announcement of the change, not at the end of the other's principal
/// cache. The gateways keep principals for 5 minutes here (`LOYALTY_PRINCIPAL_TTL_MS`), so a
/// refusal within the test's 10 s can only come from the announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_at_once_by_every_gateway_process() -> anyhow::Result<()> {
    use loyalty_testkit::process::Cluster;
    if let Err(reason) = Cluster::available() {
        println!("SKIPPED: {reason}");
        return Ok(());
    }
    let mut cluster = Cluster::builder()
        .gateways(2)
        .engines(1)
        .partitions(2)
        .env("LOYALTY_PRINCIPAL_TTL_MS", "300000")
        .start()
        .await?;
    let f = cluster
        .provision("Announced", loyalty_tests::demo_program(), 1)
        .await?;
    let gateways = cluster.gateway_urls();
    let (first, other) = (&gateways[0], &gateways[1]);
    let client = reqwest::Client::new();
    // A read-only HQ key, to revoke.
    let r = client
        .post(format!("{first}/v1/franchises/{}/api-keys", f.id))
        .bearer_auth(&f.hq_key)
        .json(&json!({"role": "hq_read_only"}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "key creation answered {}", r.status());
    let created: Value = r.json().await?;
    let (kid, key) = (
        created["id"].as_str().unwrap_or_default().to_owned(),
        created["api_key"].as_str().unwrap_or_default().to_owned(),
    );
    // The other gateway takes the key, and keeps its holder for 5 minutes.
    assert_eq!(program_status(&client, other, &f.id, &key).await, 200);

    let r = client
        .post(format!(
            "{first}/v1/franchises/{}/api-keys/{kid}/revoke",
            f.id
        ))
        .bearer_auth(&f.hq_key)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "revocation answered {}", r.status());
    let revoked_at = Instant::now();
    assert_eq!(program_status(&client, first, &f.id, &key).await, 401);
    loop {
        match program_status(&client, other, &f.id, &key).await {
            401 => break,
            200 => anyhow::ensure!(
                revoked_at.elapsed() < Duration::from_secs(10),
                "the other gateway still takes the revoked key after {:?}",
                revoked_at.elapsed()
            ),
            s => anyhow::bail!("the other gateway answered {s}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the other gateway refused the revoked key {:?} after the revocation",
        revoked_at.elapsed()
    );
    Ok(())
}
