//! What a client may hold of the server, and who may read its metrics (issue 14, defect 4 and
//! "/metrics reachable only on an internal listener or with a key"), against the real server
//! in process.

use std::time::{Duration, Instant};

use futures::future::join_all;
use loyalty_tests::{assert_problem, spawn_app, spawn_app_with, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body timeout the slow-client scenario runs with.
const BODY_TIMEOUT_MS: u64 = 600;
/// Slow clients held open at once.
const SLOW_CLIENTS: usize = 100;

/// One slow client: the head of a purchase whose 200-byte body it sends one byte every 100 ms
/// (20 s in all), reading the answer as it goes. Returns the answer (status line to end) and
/// whether the server closed the connection after it, and how long the exchange lasted.
async fn trickle_purchase(addr: &str, key: &str) -> (String, bool, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/purchases HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 200\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head sent");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..200 {
        // A write may fail once the server has answered and closed: that ends the trickle.
        if s.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    // Whatever is left of the answer, then the end of the stream (or the 5 s this waits).
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (
        String::from_utf8_lossy(&answer).into_owned(),
        closed,
        start.elapsed(),
    )
}

/// The sum of the series of `name` with `labels` on the app's `/metrics`.
async fn metric(app: &TestApp, name: &str, labels: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    loyalty_testkit::process::metric_matching(&text, name, labels)
}

#[tokio::test]
async fn slow_bodies_are_answered_408_and_their_connections_closed() {
    let app = spawn_app_with(|c| c.body_timeout_ms = BODY_TIMEOUT_MS).await;
    let f = app.franchise("Slow Café").await;
    let before = metric(&app, "loyalty_http_body_timeouts_total", "").await;
    let addr = app.address.trim_start_matches("http://").to_owned();

    let slow = join_all((0..SLOW_CLIENTS).map(|_| trickle_purchase(&addr, &f.store_key)));
    // While they trickle, a client that sends its body at once is served.
    let served = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let member = app.enrol(&f, "+33611111111").await;
        let id = member["member_id"].as_str().expect("member id");
        app.purchase(&f, "fast-1", id, 1000).await.status()
    };
    let (answers, fast) = tokio::join!(slow, served);
    assert!(
        fast.is_success(),
        "a normal purchase beside slow clients: {fast}"
    );
    for (answer, closed, took) in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a slow body must get 408, got {answer:?}"
        );
        assert!(answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"));
        assert!(answer.contains(r#""code":"request-timeout""#), "{answer}");
        assert!(*closed, "the server must close a slow client's connection");
        // Held no longer than the timeout and the trickle's own steps, far from its 20 s.
        assert!(
            *took < Duration::from_secs(10),
            "a slow client held its connection {took:?}"
        );
    }
    let after = metric(&app, "loyalty_http_body_timeouts_total", "").await;
    assert_eq!(after - before, SLOW_CLIENTS as f64, "every timeout counted");
}

#[tokio::test]
async fn a_body_sent_in_time_is_not_cut_off() {
    let app = spawn_app_with(|c| c.body_timeout_ms = BODY_TIMEOUT_MS).await;
    let f = app.franchise("Patient Café").await;
    // The body in three pieces, well within the timeout: it is read whole and applied.
    let member = app.enrol(&f, "+33622222222").await;
    let body = json!({
        "event_id": "pieces-1",
        "member_id": member["member_id"],
        "amount_cents": 1000,
        "currency": "EUR",
    })
    .to_string();
    let addr = app.address.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/purchases?wait_ms=2000 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        f.store_key,
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let third = body.len() / 3;
    for piece in [&body[..third], &body[third..2 * third], &body[2 * third..]] {
        s.write_all(piece.as_bytes()).await.expect("piece");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("answer");
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 202"),
        "{answer}"
    );
}

#[tokio::test]
async fn metrics_live_on_their_own_listener_behind_their_key() {
    let port = loyalty_testkit::ports::free_port().expect("free port");
    let key = "metrics-key-0123456789";
    let app = spawn_app_with(|c| {
        c.metrics_listen = Some(format!("127.0.0.1:{port}").parse().expect("address"));
        c.metrics_key = Some(key.into());
    })
    .await;
    let internal = format!("http://127.0.0.1:{port}");

    // The API listener does not serve them, and serves the API as before.
    let r = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("get");
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);

    // The internal listener asks for the key...
    let r = app
        .client
        .get(format!("{internal}/metrics"))
        .send()
        .await
        .expect("get");
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = app
        .client
        .get(format!("{internal}/metrics"))
        .bearer_auth("metrics-key-0123456788")
        .send()
        .await
        .expect("get");
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // ...serves them with it...
    let r = app
        .client
        .get(format!("{internal}/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("text");
    assert!(text.contains("loyalty_http_requests_total"), "{text}");
    // ...and nothing of the API.
    let r = app
        .client
        .get(format!("{internal}/v1/members/lookup?phone=%2B33600000000"))
        .bearer_auth(key)
        .send()
        .await
        .expect("get");
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test]
async fn without_settings_metrics_are_on_the_api_listener() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

async fn lookup(
    app: &TestApp,
    key: &str,
    phone: &str,
    forwarded: Option<&str>,
) -> reqwest::Response {
    let mut r = app
        .client
        .get(app.url(&format!(
            "/v1/members/lookup?phone={}",
            phone.replace('+', "%2B")
        )))
        .bearer_auth(key);
    if let Some(f) = forwarded {
        r = r.header("x-forwarded-for", f);
    }
    r.send().await.expect("lookup")
}

/// Defect 10: one store key walked 2 000 phone numbers in 0.2 s. Now a key gets its burst,
/// then 429 with `Retry-After`; another key is not affected; a QR lookup is not limited.
#[tokio::test]
async fn phone_lookups_are_rate_limited_per_key() {
    let app = spawn_app_with(|c| {
        c.lookup_limit_per_minute = 60;
        c.lookup_address_limit_per_minute = 0;
        c.lookup_burst = 5;
    })
    .await;
    let f = app.franchise("Counted Café").await;
    let g = app.franchise("Other Café").await;
    let member = app.enrol(&f, "+33633333333").await;
    let before = metric(&app, "loyalty_rate_limited_total", "scope=\"key\"").await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = lookup(&app, &f.store_key, &format!("+336000000{i:02}"), None).await;
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After in whole seconds");
            assert!((1..=2).contains(&wait), "Retry-After {wait}");
            let p = assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;
            assert!(p["detail"].as_str().unwrap_or("").contains("key"), "{p}");
        }
    }
    let answered = statuses
        .iter()
        .filter(|s| **s == StatusCode::NOT_FOUND)
        .count();
    // The burst, and at most one token refilled while the loop ran.
    assert!((5..=6).contains(&answered), "{statuses:?}");
    assert!(statuses[..5].iter().all(|s| *s == StatusCode::NOT_FOUND));
    let limited = statuses.len() - answered;
    let after = metric(&app, "loyalty_rate_limited_total", "scope=\"key\"").await;
    assert_eq!(after - before, limited as f64);

    // The member is still found by QR, and by another franchise's key (its own bucket) not at all.
    let qr = member["qr_token"].as_str().expect("qr");
    let r = app
        .client
        .get(app.url(&format!("/v1/members/lookup?qr={qr}")))
        .bearer_auth(&f.store_key)
        .send()
        .await
        .expect("qr lookup");
    assert_eq!(r.status(), StatusCode::OK);
    let r = lookup(&app, &g.store_key, "+33633333333", None).await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
}

/// The address bucket is shared by every key from one client; behind a trusted proxy the
/// configured header names the client.
#[tokio::test]
async fn phone_lookups_are_rate_limited_per_client_address() {
    let app = spawn_app_with(|c| {
        c.lookup_limit_per_minute = 0;
        c.lookup_address_limit_per_minute = 60;
        c.lookup_burst = 3;
        c.client_address_header = Some("x-forwarded-for".into());
    })
    .await;
    let f = app.franchise("Shared Address").await;
    let g = app.franchise("Same Address").await;
    let mut codes = Vec::new();
    for i in 0..6 {
        let key = if i % 2 == 0 {
            &f.store_key
        } else {
            &g.store_key
        };
        let r = lookup(&app, key, "+33644444444", Some("198.51.100.1, 203.0.113.7")).await;
        codes.push(r.status());
    }
    let served = codes
        .iter()
        .filter(|s| **s == StatusCode::NOT_FOUND)
        .count();
    assert!((3..=4).contains(&served), "{codes:?}");
    let r = lookup(&app, &f.store_key, "+33644444444", Some("203.0.113.7")).await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;
    // Another client (the proxy's last hop names it) has its own budget.
    let r = lookup(&app, &f.store_key, "+33644444444", Some("203.0.113.8")).await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
}
