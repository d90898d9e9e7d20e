//! The defects a hostile black-box client found in `loyalty dev` (issue 14), each as a scenario
//! against the real server (in process, port 0, its own data directory): what it sends, and the
//! problem it must get back, with nothing changed.

use std::time::Duration;

use loyalty_tests::{assert_problem, demo_program, spawn_app, TestApp, ADMIN_KEY};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest amount of one event (`Cents::MAX`).
const MAX_CENTS: i64 = 1_000_000_000_000;
/// The documented largest balance (`loyalty_domain::MAX_POINTS_BALANCE`).
const MAX_POINTS: u64 = 1_000_000_000_000_000_000;

/// Enrols a fresh member; returns its id.
/// `body` as is (not necessarily JSON) to `path`, with `key`.
async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: &str,
) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent")
}

/// A raw HTTP/1.1 exchange: writes `request`, reads until the server closes or the answer's
/// `content-length` is complete. Returns the status, the head (lower-case) and the body.
async fn raw_http(app: &TestApp, request: &[u8]) -> (u16, String, Vec<u8>) {
    let addr = app.address.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before it has read everything: ignore a reset here.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => 0,
        };
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| out.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head, out[end + 4..].to_vec())
}

fn rfc3339_days_ago(days: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days)).to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. Points overflow
// ---------------------------------------------------------------------------------------------

/// The largest program the validator accepts (10 000 points per unit, a 10 000 % tier) and the
/// largest amount earn 10^16 points a purchase: after a hundred, the balance is at the
/// documented limit (10^18, within int64) and the next purchase is refused with a 422 that
/// changes nothing. Balances always equal the sum of their ledger.
#[tokio::test]
async fn the_largest_purchases_stop_at_the_points_limit_with_a_422_that_changes_nothing() {
    let app = spawn_app().await;
    let f = app
        .franchise_with(
            "Huge",
            json!({
                "currency": "EUR", "points_per_unit": 10_000,
                "tier_qualification": {"metric": "visits", "window_days": 365},
                "tiers": [{"name": "Only", "threshold": 0, "multiplier_pct": 10_000}],
            }),
        )
        .await;
    let m = app.enrol_id(&f, "+33611110001").await;
    for i in 1..=100u64 {
        let r = app.purchase(&f, &format!("huge-{i}"), &m, MAX_CENTS).await;
        assert_eq!(r.status(), StatusCode::OK, "purchase {i}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["outcome"]["points_earned"], 10_000_000_000_000_000u64);
        assert_eq!(
            p["member"]["points"].as_u64(),
            Some(i * 10_000_000_000_000_000)
        );
    }
    let before = app.status(&f, &m).await;
    assert_eq!(before["points"].as_u64(), Some(MAX_POINTS));
    let r = app.purchase(&f, "huge-101", &m, MAX_CENTS).await;
    let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "limit-exceeded").await;
    assert_eq!(p["limit"].as_u64(), Some(MAX_POINTS), "{p}");
    assert_eq!(
        app.status(&f, &m).await,
        before,
        "the refusal changed nothing"
    );
    // A small purchase that earns nothing more still fits; one that earns a point does not.
    let r = app.purchase(&f, "huge-102", &m, 0).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.purchase(&f, "huge-103", &m, 1).await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "limit-exceeded").await;

    let ledger = app.ledger(&f, &m).await;
    let mut sum: i128 = 0;
    for e in ledger.iter().rev() {
        sum += i128::from(e["points"].as_i64().expect("an int64 entry"));
        assert_eq!(i128::from(e["balance_after"].as_u64().unwrap()), sum, "{e}");
    }
    assert_eq!(sum, i128::from(MAX_POINTS), "balance = sum of the ledger");
}

// ---------------------------------------------------------------------------------------------
// 3. JSON bodies
// ---------------------------------------------------------------------------------------------

/// Every JSON body must be an object: an array (taken positionally by serde before), a string,
/// a number or null is 422 on every route with a body, nested objects included; a syntax error
/// is 400 `malformed-json` whatever the fields before it. A refused body uses up nothing.
#[tokio::test]
async fn json_bodies_must_be_objects_and_syntax_errors_are_400() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110003").await;
    let routes: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/v1/franchises".into(), ADMIN_KEY),
        (
            Method::PUT,
            format!("/v1/franchises/{}/program", f.id),
            &f.hq_key,
        ),
        (
            Method::POST,
            format!("/v1/franchises/{}/stores", f.id),
            &f.hq_key,
        ),
        (Method::POST, "/v1/members".into(), &f.store_key),
        (
            Method::POST,
            "/v1/purchases?wait_ms=2000".into(),
            &f.store_key,
        ),
        (
            Method::POST,
            "/v1/refunds?wait_ms=2000".into(),
            &f.store_key,
        ),
        (Method::POST, "/v1/redemptions".into(), &f.store_key),
    ];
    for (method, path, key) in &routes {
        for body in [
            format!(r#"["arr-1","{m}",null,null,100,"EUR",null]"#),
            r#"["+33611110099"]"#.to_owned(),
            r#""a string""#.to_owned(),
            "12".to_owned(),
            "null".to_owned(),
            "true".to_owned(),
        ] {
            let r = send_raw(&app, method.clone(), path, key, &body).await;
            let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
            assert!(
                p["detail"].as_str().unwrap().contains("object"),
                "{method} {path} {body}: {p}"
            );
        }
        for body in [
            r#"{"a":}"#,
            r#"{"event_id":"x",}"#,
            r#"{"phone":"+33611110098""#,
            "{",
        ] {
            let r = send_raw(&app, method.clone(), path, key, body).await;
            assert_problem(r, StatusCode::BAD_REQUEST, "malformed-json").await;
        }
    }
    // Nested objects of a program, given positionally.
    let mut positional_tier = demo_program();
    positional_tier["tiers"] = json!([["Bronze", 0, 100]]);
    let mut positional_card = demo_program();
    positional_card["stamp_card"] = json!([10, "free-coffee"]);
    let mut positional_window = demo_program();
    positional_window["tier_qualification"] = json!(["spend_cents", 365]);
    let mut positional_reward = demo_program();
    positional_reward["rewards"] = json!([["free-coffee", "Free coffee", 100], {"id": "free-pastry", "name": "Free pastry", "cost_points": 150}]);
    for program in [
        json!(["EUR", 1, 50, null, {"metric": "spend_cents", "window_days": 365}, [], [], null]),
        positional_tier,
        positional_card,
        positional_window,
        positional_reward,
    ] {
        let r = app
            .post(
                "/v1/franchises",
                ADMIN_KEY,
                &json!({"name": "Positional", "program": program}),
            )
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
        let r = app
            .put(
                &format!("/v1/franchises/{}/program", f.id),
                &f.hq_key,
                &json!({"program": program}),
            )
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    }
    // Nothing of the above was applied: the event id of the array is still free.
    let before = app.status(&f, &m).await;
    let r = app.purchase(&f, "arr-1", &m, 100).await;
    assert_eq!(r.status(), StatusCode::OK);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["replayed"], false, "{p}");
    assert_eq!(
        p["member"]["points"],
        before["points"].as_u64().unwrap() + 1
    );
    let program: Value = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(program["program_version"], 1, "no program was replaced");
}

// ---------------------------------------------------------------------------------------------
// 5. Every error is a problem
// ---------------------------------------------------------------------------------------------

/// A known path with another method is 405 with `Allow` (TRACE included), HEAD is answered
/// wherever GET is, and a URI or a header section over the gateway's limits is 414 / 431, each
/// as a problem.
#[tokio::test]
async fn methods_heads_and_oversize_requests_get_problems() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110005").await;
    let call = |method: &str, path: &str, key: Option<&str>| {
        let mut r = app.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(path),
        );
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    for (method, path, key, allow) in [
        ("TRACE", "/healthz".to_owned(), None, "GET, HEAD"),
        ("POST", "/openapi.json".to_owned(), None, "GET, HEAD"),
        ("DELETE", "/metrics".to_owned(), None, "GET, HEAD"),
        (
            "TRACE",
            "/v1/purchases".to_owned(),
            Some(&f.store_key),
            "POST",
        ),
        (
            "GET",
            "/v1/purchases".to_owned(),
            Some(&f.store_key),
            "POST",
        ),
        (
            "DELETE",
            format!("/v1/members/{m}"),
            Some(&f.store_key),
            "GET, HEAD",
        ),
        (
            "PATCH",
            format!("/v1/franchises/{}/program", f.id),
            Some(&f.hq_key),
            "GET, HEAD, PUT",
        ),
        (
            "OPTIONS",
            "/v1/members".to_owned(),
            Some(&f.store_key),
            "POST",
        ),
        ("TRACE", "/dashboard".to_owned(), None, "GET, HEAD"),
        ("PUT", "/dashboard/session".to_owned(), None, "POST"),
    ] {
        let r = call(method, &path, key.map(String::as_str)).await.unwrap();
        let got = r
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(got.as_deref(), Some(allow), "{method} {path}: Allow");
        let p = assert_problem(r, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;
        assert!(p["detail"].as_str().unwrap().contains(method), "{p}");
    }
    // Without a key, a /v1 path still needs one first.
    let r = call("TRACE", "/v1/purchases", None).await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Unknown paths stay 404, whatever the method.
    let r = call("TRACE", "/no/such/path", None).await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;

    // HEAD of every GET route: the GET's status and headers, no body.
    for (path, key, ct) in [
        ("/healthz".to_owned(), None, "application/json"),
        ("/readyz".to_owned(), None, "application/json"),
        ("/openapi.json".to_owned(), None, "application/json"),
        ("/metrics".to_owned(), None, "text/plain; version=0.0.4"),
        (
            format!("/v1/members/{m}"),
            Some(&f.store_key),
            "application/json",
        ),
        (
            format!("/v1/franchises/{}/program", f.id),
            Some(&f.hq_key),
            "application/json",
        ),
    ] {
        let r = call("HEAD", &path, key.map(String::as_str)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "HEAD {path}");
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(ct),
            "HEAD {path}"
        );
        assert!(
            r.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }
    let r = call("HEAD", "/v1/members/mnosuchmember", Some(&f.store_key))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Over the gateway's limits, under the HTTP codec's: problems.
    let long = format!("/healthz?pad={}", "a".repeat(10_000));
    let r = call("GET", &long, None).await.unwrap();
    assert_problem(r, StatusCode::URI_TOO_LONG, "uri-too-long").await;
    let long = format!("/v1/members/{}", "m".repeat(10_000));
    let r = call("GET", &long, None).await.unwrap();
    assert_problem(r, StatusCode::URI_TOO_LONG, "uri-too-long").await;
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-pad", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_problem(
        r,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers-too-large",
    )
    .await;
    let mut many = HeaderMap::new();
    for i in 0..70 {
        many.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            HeaderValue::from_static("a"),
        );
    }
    let r = app
        .client
        .get(app.url("/healthz"))
        .headers(many)
        .send()
        .await
        .unwrap();
    assert_problem(
        r,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers-too-large",
    )
    .await;
    // Just under the limits: served.
    let ok = format!("/healthz?pad={}", "a".repeat(7_000));
    assert_eq!(
        call("GET", &ok, None).await.unwrap().status(),
        StatusCode::OK
    );
}

/// What the HTTP codec (actix-http) refuses before the application sees a request keeps its
/// status and closes the connection: a head it cannot parse (an invalid byte in a header, a URI
/// longer than the `http` crate takes) is 400, a head over its buffer or header count 431. Its
/// answers have no body (documented: actix-http 3 offers no hook for them), and the server
/// keeps serving.
#[tokio::test]
async fn what_the_http_codec_refuses_keeps_its_status() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "an invalid header byte",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a 70 000 byte URI",
            [
                b"GET /healthz?".as_slice(),
                &[b'a'; 70_000],
                b" HTTP/1.1\r\nHost: x\r\n\r\n",
            ]
            .concat(),
            400,
        ),
        (
            "a 140 000 byte header",
            [
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
                &[b'a'; 140_000],
                b"\r\n\r\n",
            ]
            .concat(),
            431,
        ),
        (
            "100 headers",
            [
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(),
                (0..100)
                    .flat_map(|i| format!("X-{i}: a\r\n").into_bytes())
                    .collect(),
                b"\r\n".to_vec(),
            ]
            .concat(),
            431,
        ),
    ];
    for (what, request, status) in cases {
        let (got, head, _) = raw_http(&app, &request).await;
        assert_eq!(got, status, "{what}: {head}");
        assert!(head.contains("connection: close"), "{what}: {head}");
    }
    let (status, head, body) = raw_http(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, br#"{"status":"ok"}"#);
}

// ---------------------------------------------------------------------------------------------
// 6. Authorization
// ---------------------------------------------------------------------------------------------

/// `Authorization` by RFC 9110 §11 and RFC 6750 §2.1: the scheme is case-insensitive, one space
/// separates it from the token, and the token is one run of visible characters (no doubled
/// space, no tab). Two Authorization headers are 400 (RFC 6750 §3.1 `invalid_request`: more
/// than one way of sending the token), whatever each says.
#[tokio::test]
async fn authorization_is_parsed_by_the_rfc_and_sent_once() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110006").await;
    let path = format!("/v1/members/{m}");
    let with = |values: Vec<String>| {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        }
        app.client.get(app.url(&path)).headers(h).send()
    };
    let key = &f.store_key;
    // Trailing spaces and tabs are optional whitespace around the field value, which the HTTP
    // parser removes (RFC 9110 §5.5): the value is then `Bearer <key>`.
    for v in [
        format!("Bearer {key}"),
        format!("bearer {key}"),
        format!("BEARER {key}"),
        format!("BeArEr {key}"),
        format!("Bearer {key}\t"),
        format!("Bearer {key} "),
    ] {
        let r = with(vec![v.clone()]).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{v:?}");
    }
    for v in [
        format!("Bearer  {key}"),
        format!("Bearer \t{key}"),
        format!("Bearer\t{key}"),
        format!("Bearer {key}\tx"),
        format!("Bearer {key} x"),
        format!("Bearer {key},"),
        format!("Basic {key}"),
        format!("Bearerx {key}"),
        key.to_string(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
    ] {
        let r = with(vec![v.clone()]).await.unwrap();
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{v:?}"
        );
        assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    for values in [
        vec![format!("Bearer {key}"), format!("Bearer {key}")],
        vec![format!("Bearer {key}"), "Bearer nope".to_owned()],
        vec!["Bearer nope".to_owned(), format!("Bearer {key}")],
    ] {
        let r = with(values.clone()).await.unwrap();
        assert_problem(r, StatusCode::BAD_REQUEST, "ambiguous-authorization").await;
    }
    // The same on a write: nothing is applied.
    let before = app.status(&f, &m).await;
    let mut h = HeaderMap::new();
    h.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    h.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    let r = app
        .client
        .post(app.url("/v1/purchases?wait_ms=2000"))
        .headers(h)
        .json(
            &json!({"event_id": "auth-2", "member_id": m, "amount_cents": 500, "currency": "EUR"}),
        )
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "ambiguous-authorization").await;
    assert_eq!(app.status(&f, &m).await, before);
}

// ---------------------------------------------------------------------------------------------
// 7. Zero refunds
// ---------------------------------------------------------------------------------------------

/// A refund of 0 cents is refused (422) before it reaches the log: its event id stays free.
#[tokio::test]
async fn a_zero_refund_is_refused_and_keeps_its_event_id() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110007").await;
    assert_eq!(
        app.purchase(&f, "z-p", &m, 5_000).await.status(),
        StatusCode::OK
    );
    let before = app.status(&f, &m).await;
    let refund = |amount: i64| {
        app.post(
            "/v1/refunds?wait_ms=2000",
            &f.store_key,
            json!({"event_id": "z-r", "purchase_event_id": "z-p", "amount_cents": amount}),
        )
    };
    let p = assert_problem(
        refund(0).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("amount_cents"),
        "{p}"
    );
    assert_eq!(app.status(&f, &m).await, before, "nothing changed");
    // The event id was not used up: a real refund with it is applied, not a conflict.
    let r = refund(1_000).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replayed"], false, "{v}");
    assert_eq!(v["outcome"]["points_reversed"], 10);
}

// ---------------------------------------------------------------------------------------------
// 9. occurred_at horizon
// ---------------------------------------------------------------------------------------------

/// `occurred_at` is refused (422) more than 365 days in the past (1970 included) or more than
/// 5 minutes in the future; within the horizon it is accepted.
#[tokio::test]
async fn occurred_at_outside_the_horizon_is_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110009").await;
    assert_eq!(
        app.purchase(&f, "h-p", &m, 5_000).await.status(),
        StatusCode::OK
    );
    let before = app.status(&f, &m).await;
    let purchase = |id: &str, at: String| {
        app.post(
            "/v1/purchases?wait_ms=2000",
            &f.store_key,
            json!({"event_id": id, "member_id": m, "amount_cents": 1_000, "currency": "EUR", "occurred_at": at}),
        )
    };
    for (id, at) in [
        ("h-1970", "1970-01-01T00:00:00Z".to_owned()),
        ("h-1999", "1999-12-31T23:59:59+01:00".to_owned()),
        ("h-366", rfc3339_days_ago(366)),
        (
            "h-future",
            (jiff::Timestamp::now() + jiff::SignedDuration::from_mins(10)).to_string(),
        ),
    ] {
        let p = assert_problem(
            purchase(id, at.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        )
        .await;
        assert!(
            p["detail"].as_str().unwrap().contains("occurred_at"),
            "{at}: {p}"
        );
    }
    let r = app
        .post(
            "/v1/refunds",
            &f.store_key,
            json!({"event_id": "h-r", "purchase_event_id": "h-p", "amount_cents": 1, "occurred_at": "1970-01-01T00:00:00Z"}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = app
        .post(
            "/v1/redemptions",
            &f.store_key,
            json!({"event_id": "h-x", "member_id": m, "reward_id": "free-coffee", "occurred_at": "1970-01-01T00:00:00Z"}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    assert_eq!(app.status(&f, &m).await, before, "nothing changed");
    // Inside the horizon: applied, and the 1970 event id was never used.
    let r = purchase("h-1970", rfc3339_days_ago(364)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replayed"], false);
    assert_eq!(v["outcome"]["points_earned"], 10);
}

// ---------------------------------------------------------------------------------------------
// 12. Log levels
// ---------------------------------------------------------------------------------------------

/// Points this process's stderr (where the logs go) at a file until [`Captured::finish`], which
/// puts stderr back and returns what was written.
struct Captured {
    path: std::path::PathBuf,
    saved: i32,
}

fn capture_stderr() -> Captured {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join(format!("hostile-input-{}.log", std::process::id()));
    let file = std::fs::File::create(&path).expect("log file");
    // SAFETY: dup and dup2 on valid descriptors: fd 2 writes to the file, `saved` is the
    // original stderr.
    let saved = unsafe { libc::dup(2) };
    assert!(saved >= 0, "dup");
    assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), 2) }, 2, "dup2");
    Captured { path, saved }
}

impl Captured {
    fn finish(self) -> String {
        // SAFETY: restores the descriptor saved above.
        unsafe {
            libc::dup2(self.saved, 2);
            libc::close(self.saved);
        }
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        text
    }
}

/// A client's bad requests (malformed heads, oversize headers, bad JSON, bad keys, unknown
/// routes, refused events) are not the server's faults: nothing is logged at ERROR (nor WARN)
/// for them; ERROR is kept for the server's own failures.
#[tokio::test]
async fn client_errors_are_not_logged_as_server_errors() {
    // SAFETY: set before any other thread of this test reads the environment.
    unsafe { std::env::set_var("RUST_LOG", "info") };
    let log = capture_stderr();
    // What reaches fd 2 is captured (libtest's capture of `eprintln!` is bypassed, as the log
    // writer bypasses it).
    {
        use std::io::Write;
        let _ = std::io::stderr().write_all(b"capture-marker\n");
    }
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110012").await;
    for request in [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n".to_vec(),
        [
            b"GET /healthz?".as_slice(),
            &[b'a'; 70_000],
            b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        .concat(),
        [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
            &[b'a'; 140_000],
            b"\r\n\r\n",
        ]
        .concat(),
        b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
    ] {
        let (status, _, _) = raw_http(&app, &request).await;
        assert!((400..500).contains(&status));
    }
    for (path, body) in [
        ("/v1/purchases", r#"{"a":}"#.to_owned()),
        ("/v1/purchases", r#"["x"]"#.to_owned()),
        (
            "/v1/purchases?wait_ms=2000",
            json!({"event_id": "l-1", "member_id": m, "amount_cents": 100, "currency": "USD"})
                .to_string(),
        ),
        (
            "/v1/refunds?wait_ms=2000",
            json!({"event_id": "l-2", "purchase_event_id": "nope", "amount_cents": 100})
                .to_string(),
        ),
        (
            "/v1/redemptions",
            json!({"event_id": "l-3", "member_id": m, "reward_id": "free-pastry"}).to_string(),
        ),
        ("/v1/members", json!({"phone": "0612"}).to_string()),
    ] {
        let r = send_raw(&app, Method::POST, path, &f.store_key, &body).await;
        assert!(
            r.status().is_client_error(),
            "{path} {body}: {}",
            r.status()
        );
    }
    let r = app
        .get("/v1/members/lookup?phone=%2B33699999999", "nope")
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.get("/v1/no/such/route", &f.store_key).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .client
        .request(Method::TRACE, app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = log.finish();
    assert!(
        text.contains("capture-marker"),
        "stderr was captured: {text}"
    );
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(
        bad.is_empty(),
        "client errors logged as server errors:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Found by the property-based API test (scripts/schemathesis.py): what the OpenAPI document
// allows, the server must accept; what the server refuses, the document must refuse.
// ---------------------------------------------------------------------------------------------

/// `1250.0` and `1.25e3` are the integer 1250 in JSON (and in the document's `integer`): an
/// amount, a program number or a refund written so is taken as that integer, exactly, while a
/// number with a fraction is still refused. They used to be 422 "invalid type: floating point".
#[tokio::test]
async fn integral_numbers_are_integers_however_they_are_written() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110021").await;
    let r = send_raw(
        &app,
        Method::POST,
        "/v1/purchases?wait_ms=5000",
        &f.store_key,
        &format!(
            r#"{{"event_id":"int-p","member_id":"{m}","amount_cents":1250.0,"currency":"EUR"}}"#
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["points_earned"], 12, "{v}");
    let r = send_raw(
        &app,
        Method::POST,
        "/v1/refunds?wait_ms=5000",
        &f.store_key,
        r#"{"event_id":"int-r","purchase_event_id":"int-p","amount_cents":1.0e2}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["amount_cents"], 100, "{v}");
    // The same request with the integer spelt otherwise is the same request: a replay.
    let r = send_raw(
        &app,
        Method::POST,
        "/v1/refunds?wait_ms=5000",
        &f.store_key,
        r#"{"event_id":"int-r","purchase_event_id":"int-p","amount_cents":100}"#,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replayed"], true, "{v}");
    // A program's numbers too.
    let mut program = demo_program().to_string();
    program = program.replace(r#""points_per_unit":1"#, r#""points_per_unit":2.0"#);
    assert!(program.contains("2.0"), "{program}");
    let r = send_raw(
        &app,
        Method::PUT,
        &format!("/v1/franchises/{}/program", f.id),
        &f.hq_key,
        &format!(r#"{{"program":{program}}}"#),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["program"]["points_per_unit"], 2, "{v}");
    // Not integers: refused as before, nothing applied.
    let before = app.status(&f, &m).await;
    for amount in ["12.5", "1e-2", "-1.0", "1e13"] {
        let r = send_raw(
            &app,
            Method::POST,
            "/v1/purchases?wait_ms=2000",
            &f.store_key,
            &format!(
                r#"{{"event_id":"int-bad","member_id":"{m}","amount_cents":{amount},"currency":"EUR"}}"#
            ),
        )
        .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    }
    assert_eq!(app.status(&f, &m).await, before, "nothing changed");
}

/// A ledger cursor is an int64 (`next_before` is one): above 2^63 - 1 is 422, not read as
/// "from the newest" (it used to answer the first page).
#[tokio::test]
async fn a_ledger_cursor_above_int64_is_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110022").await;
    let path = |before: &str| format!("/v1/members/{m}/ledger?before={before}");
    let p = assert_problem(
        app.get(&path("9223372036854775808"), &f.hq_key).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("before"), "{p}");
    let r = app.get(&path("9223372036854775807"), &f.hq_key).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(1), "{v}");
}

/// Names (franchise, store, tier, reward, member) are checked as sent: a control character
/// anywhere (a tab or a newline at an edge included, which trimming used to hide, and in tier
/// and reward names, which were not checked at all) or more than 100 characters is 422, and
/// nothing is created. Spaces around a name are still trimmed.
#[tokio::test]
async fn names_with_control_characters_are_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let long = format!("{} ", "x".repeat(100));
    for name in [
        "Shop\n",
        "\tShop",
        "Sh\u{1}op",
        "Shop\u{85}",
        "Shop\u{7f}",
        &long,
    ] {
        let r = app
            .post(
                "/v1/franchises",
                ADMIN_KEY,
                json!({"name": name, "program": demo_program()}),
            )
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
        let r = app
            .post(
                &format!("/v1/franchises/{}/stores", f.id),
                &f.hq_key,
                json!({"name": name}),
            )
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
        for (list, field) in [("tiers", 0), ("rewards", 1)] {
            let mut program = demo_program();
            program[list][field]["name"] = json!(name);
            let r = app
                .put(
                    &format!("/v1/franchises/{}/program", f.id),
                    &f.hq_key,
                    json!({ "program": program }),
                )
                .await;
            let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{list}[{field}].name")),
                "{p}"
            );
        }
        let r = app
            .post(
                "/v1/members?wait_ms=2000",
                &f.store_key,
                json!({"phone": "+33611110023", "name": name}),
            )
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    }
    // Nothing was created: the program is still version 1, the phone is not a member.
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["program_version"], 1, "{v}");
    let r = app
        .get("/v1/members/lookup?phone=%2B33611110023", &f.store_key)
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    // Printable names, spaces around them trimmed, are accepted.
    let r = app
        .post(
            &format!("/v1/franchises/{}/stores", f.id),
            &f.hq_key,
            json!({"name": "  Café de la Gare  "}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["name"], "Café de la Gare");
}

/// A lookup takes exactly one of `phone` or `qr` and no other query parameter (the document's
/// `by` object: one property, no others): an unknown parameter used to be ignored.
#[tokio::test]
async fn a_lookup_takes_one_of_phone_or_qr_and_nothing_else() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let enrolled = app.enrol(&f, "+33611110024").await;
    let qr = enrolled["qr_token"].as_str().unwrap();
    let m = enrolled["member_id"].as_str().unwrap();
    for query in [
        format!("phone=%2B33611110024&qr={qr}"),
        format!("member_id={m}"),
        "phone=%2B33611110024&store=s_1".to_owned(),
        String::new(),
    ] {
        let r = app
            .get(&format!("/v1/members/lookup?{query}"), &f.store_key)
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    }
    for query in ["phone=%2B33611110024".to_owned(), format!("qr={qr}")] {
        let r = app
            .get(&format!("/v1/members/lookup?{query}"), &f.store_key)
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["member_id"], m);
    }
}

// ---------------------------------------------------------------------------------------------
// Line items of a purchase
// ---------------------------------------------------------------------------------------------

/// A purchase's `items` that are not a list of line objects, too many, out of bounds, with an
/// unknown field, or adding up past the purchase (even past 64 bits of cents) are 422
/// `invalid-request` and change nothing; the event id stays free.
#[tokio::test]
async fn purchase_items_out_of_shape_or_bounds_are_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol_id(&f, "+33611110020").await;
    let before = app.status(&f, &m).await;
    let line = |q: Value, cents: Value| json!({"sku": "A", "quantity": q, "amount_cents": cents});
    let many: Vec<Value> = (0..201).map(|_| line(json!(1), json!(0))).collect();
    for (amount, items, detail) in [
        (100, json!("A"), "invalid type: string"),
        (100, json!({"sku": "A"}), "invalid type: map"),
        (100, json!([["A", null, 1, 0]]), "expected a JSON object"),
        (
            100,
            json!([{"sku": "A", "quantity": 1, "amount_cents": 0, "price": 1}]),
            "unknown field `price`",
        ),
        (
            100,
            json!([{"quantity": 1, "amount_cents": 0}]),
            "missing field `sku`",
        ),
        (
            100,
            json!([line(json!(1e30), json!(0))]),
            "invalid type: floating point",
        ),
        (
            100,
            json!([line(json!(1.5), json!(0))]),
            "invalid type: floating point",
        ),
        (
            100,
            json!([line(json!("1"), json!(0))]),
            "invalid type: string",
        ),
        (
            100,
            json!([line(json!(-1), json!(0))]),
            "items[0].quantity must be between 1 and 10000, got -1",
        ),
        (
            100,
            json!([line(json!(1), json!(MAX_CENTS + 1))]),
            "items[0].amount_cents must be between 0 and 1000000000000",
        ),
        (
            100,
            json!(many),
            "a purchase has at most 200 items, got 201",
        ),
        (
            MAX_CENTS,
            json!([
                line(json!(1), json!(MAX_CENTS)),
                line(json!(1), json!(MAX_CENTS))
            ]),
            "the items' amounts add up to 2000000000000 cents",
        ),
    ] {
        let r = app
            .post(
                "/v1/purchases?wait_ms=2000",
                &f.store_key,
                json!({"event_id": "hi-items", "member_id": m, "amount_cents": amount,
                       "currency": "EUR", "items": items}),
            )
            .await;
        let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
        assert!(
            p["detail"].as_str().unwrap().contains(detail),
            "{items}: {p}"
        );
    }
    assert_eq!(app.status(&f, &m).await, before, "nothing changed");
    // An empty list or null is no items; the event id was not used up.
    for (id, items) in [("hi-items", json!([])), ("hi-items-2", Value::Null)] {
        let r = app
            .post(
                "/v1/purchases?wait_ms=2000",
                &f.store_key,
                json!({"event_id": id, "member_id": m, "amount_cents": 1000,
                       "currency": "EUR", "items": items}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{id}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["replayed"], false, "{v}");
        assert_eq!(v["outcome"]["points_earned"], 10, "{v}");
    }
}

/// A till cannot use the platform's own event ids (an enrolment's, an erasure's, the
/// scheduler's): each is a 422 naming the field, recorded nowhere (the same request is refused
/// again the same way), and the member's balance does not move.
#[tokio::test]
async fn the_platforms_own_event_ids_are_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Café Réservé").await;
    let m = app.enrol_id(&f, "+33612340601").await;
    let before = app.status(&f, &m).await;
    for id in [
        format!("sched:{m}:1764547200000"),
        format!("enrol.{m}"),
        format!("erase.{m}"),
    ] {
        for _ in 0..2 {
            let r = app.purchase(&f, &id, &m, 1_000).await;
            let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap()
                    .contains("event_id must not start with"),
                "{p}"
            );
        }
        let body = json!({ "event_id": id, "member_id": m, "reward_id": "free-coffee" });
        let r = app
            .post("/v1/redemptions?wait_ms=5000", &f.store_key, &body)
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    }
    assert_eq!(app.status(&f, &m).await, before);
}
