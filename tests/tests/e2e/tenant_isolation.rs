//! Tenant isolation, generated from the OpenAPI document (libs/gateway/src/openapi.json): EVERY
//! operation it lists is called with franchise B's keys (HQ, read-only HQ, store) on franchise
//! A's resources, so an operation added later is covered without anyone remembering to.
//!
//! Requests are built from the document alone: path parameters are filled with A's ids (a path
//! parameter the test has no A value for fails it), query and body fields that name a
//! resource (`member_id`, `store_id`, `store`, `qr`, `purchase_event_id`...) with A's, bodies
//! start from the operation's first example. Each operation then falls under one rule, or the
//! test fails naming it:
//! - **public** (`security: []`: health, readiness, metrics, this document): needs no key; its
//!   answer must hold none of A's data;
//! - **admin only** (`x-roles` = `[admin]`): every key of B is 403;
//! - **names A** (a path parameter, or a field filled with one of A's ids): every key of B gets
//!   401, 403 or 404, never a 2xx;
//! - **acts in the caller's franchise** (names nothing of A, e.g. an enrolment of a phone
//!   number: the member it makes is B's): any answer but a 5xx.
//!
//! Whatever the rule, no answer may hold any of A's data: its ids, names, phone number, QR
//! token, event ids or keys. And a control proves the requests name A's resources rightly:
//! each GET operation that names A answers A's own key (of a role it allows) with a 2xx.

use std::collections::BTreeMap;

use loyalty_tests::{spawn_app, TestApp, ADMIN_KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const DOC: &str = include_str!("../../../libs/gateway/src/openapi.json");
const A_PHONE: &str = "+33655501234";
const A_MEMBER_NAME: &str = "Zoé Alphaonly";
const A_NAME: &str = "Alpha Isolated Franchise";
const A_STORE_NAME: &str = "Alpha Store Opera";
const A_REWARD: &str = "alpha-croissant";
const A_PURCHASE: &str = "alpha-purchase-0001";

/// Franchise A: everything B's keys must never reach.
struct Victim {
    fid: String,
    sid: String,
    member: String,
    qr: String,
    hq_key: String,
    store_key: String,
    read_only_key: String,
    store_key_id: String,
    hq_key_id: String,
}

impl Victim {
    /// What no answer to B may contain.
    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![
            ("A's franchise id", self.fid.clone()),
            ("A's store id", self.sid.clone()),
            ("A's member id", self.member.clone()),
            ("A's QR token", self.qr.clone()),
            ("A's HQ key", self.hq_key.clone()),
            ("A's store key", self.store_key.clone()),
            ("A's read-only key", self.read_only_key.clone()),
            ("A's store key id", self.store_key_id.clone()),
            ("A's HQ key id", self.hq_key_id.clone()),
            ("A's name", A_NAME.to_owned()),
            ("A's store name", A_STORE_NAME.to_owned()),
            ("A's member's name", A_MEMBER_NAME.to_owned()),
            ("A's member's phone", A_PHONE[3..].to_owned()),
            ("A's reward", A_REWARD.to_owned()),
            ("A's purchase", A_PURCHASE.to_owned()),
        ]
    }

    /// A's value for a path parameter, query parameter or body field, and whether it is one
    /// of A's ids (naming a resource of A), rather than data any franchise may send.
    fn value_for(&self, name: &str) -> Option<(Value, bool)> {
        let id = |s: &str| Some((Value::String(s.to_owned()), true));
        match name {
            "fid" | "franchise_id" => id(&self.fid),
            "sid" | "store_id" | "store" => id(&self.sid),
            "member_id" => id(&self.member),
            "kid" => id(&self.store_key_id),
            "qr" => id(&self.qr),
            "purchase_event_id" => id(A_PURCHASE),
            "phone" => Some((Value::String(A_PHONE.to_owned()), false)),
            "reward_id" => Some((Value::String(A_REWARD.to_owned()), false)),
            // A segment every franchise with segments has (A's program has them).
            "segment" => Some((Value::String("new".to_owned()), false)),
            _ => None,
        }
    }
}

async fn created(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), StatusCode::CREATED, "setup");
    r.json().await.expect("json")
}

async fn victim(app: &TestApp) -> Victim {
    let mut program = loyalty_tests::demo_program();
    program["rewards"] = json!([{"id": A_REWARD, "name": "Croissant", "cost_points": 100}]);
    program["stamp_card"]["reward_id"] = json!(A_REWARD);
    program["segments"] = json!({});
    let f = created(
        app.post(
            "/v1/franchises",
            ADMIN_KEY,
            &json!({"name": A_NAME, "program": program}),
        )
        .await,
    )
    .await;
    let fid = f["id"].as_str().unwrap().to_owned();
    let hq_key = f["hq_api_key"].as_str().unwrap().to_owned();
    let s = created(
        app.post(
            &format!("/v1/franchises/{fid}/stores"),
            &hq_key,
            &json!({"name": A_STORE_NAME}),
        )
        .await,
    )
    .await;
    let store_key = s["api_key"].as_str().unwrap().to_owned();
    let ro = created(
        app.post(
            &format!("/v1/franchises/{fid}/api-keys"),
            &hq_key,
            &json!({"role": "hq_read_only"}),
        )
        .await,
    )
    .await;
    let e = app
        .post(
            "/v1/members?wait_ms=5000",
            &store_key,
            &json!({"phone": A_PHONE, "name": A_MEMBER_NAME}),
        )
        .await;
    assert_eq!(e.status(), StatusCode::CREATED);
    let e: Value = e.json().await.unwrap();
    let member = e["member_id"].as_str().unwrap().to_owned();
    let r = app
        .post(
            "/v1/purchases?wait_ms=5000",
            &store_key,
            &json!({"event_id": A_PURCHASE, "member_id": member, "amount_cents": 25_000, "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "A's purchase");
    Victim {
        fid,
        sid: s["id"].as_str().unwrap().to_owned(),
        qr: e["qr_token"].as_str().unwrap().to_owned(),
        member,
        hq_key,
        store_key,
        read_only_key: ro["api_key"].as_str().unwrap().to_owned(),
        store_key_id: s["api_key_id"].as_str().unwrap().to_owned(),
        hq_key_id: f["hq_api_key_id"].as_str().unwrap().to_owned(),
    }
}

/// `$ref`s followed, inside the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.trim_start_matches('#')).expect("ref")),
        None => v,
    }
}

/// A value the schema allows, from what it says of itself.
fn sample(doc: &Value, schema: &Value) -> Option<Value> {
    let s = resolve(doc, schema);
    if let Some(v) = s.get("examples").and_then(|e| e.get(0)) {
        return Some(v.clone());
    }
    for k in ["example", "default", "const"] {
        if let Some(v) = s.get(k) {
            return Some(v.clone());
        }
    }
    s.get("enum").and_then(|e| e.get(0)).cloned()
}

/// Replaces, in a body, every field A has a value for; returns whether one named A.
fn fill_body(v: &mut Value, a: &Victim, serial: &mut u32) -> bool {
    let mut names_a = false;
    match v {
        Value::Object(o) => {
            for (k, field) in o.iter_mut() {
                if k == "event_id" {
                    *serial += 1;
                    *field = json!(format!("isolation-{serial:04}"));
                } else if let Some((value, is_id)) = a.value_for(k) {
                    *field = value;
                    names_a |= is_id;
                } else {
                    names_a |= fill_body(field, a, serial);
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                names_a |= fill_body(i, a, serial);
            }
        }
        _ => {}
    }
    names_a
}

/// One operation of the document, as a request on A's resources.
struct Call {
    label: String,
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    names_a: bool,
    public: bool,
    roles: Vec<String>,
}

fn calls(doc: &Value, a: &Victim) -> Vec<Call> {
    let mut out = Vec::new();
    let mut serial = 0;
    let global_security = doc["security"].clone();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let shared: Vec<Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if method == "parameters" {
                continue;
            }
            let label = format!("{} {template}", method.to_uppercase());
            let mut path = template.clone();
            let mut query = Vec::new();
            let mut names_a = false;
            let own: Vec<Value> = op
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for p in shared.iter().chain(own.iter()) {
                let p = resolve(doc, p);
                let name = p["name"].as_str().expect("parameter name");
                match p["in"].as_str() {
                    Some("path") => {
                        let (v, _) = a.value_for(name).unwrap_or_else(|| {
                            panic!("{label}: no value of A for path parameter {name}: add it to Victim::value_for")
                        });
                        path = path.replace(&format!("{{{name}}}"), v.as_str().unwrap());
                        names_a = true;
                    }
                    Some("query") => {
                        let schema = resolve(doc, &p["schema"]);
                        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                            // An object spread over the query (`style: form, explode`): one of
                            // its properties, A's id first.
                            let mut best: Option<(String, Value, bool)> = None;
                            for k in props.keys() {
                                if let Some((v, is_id)) = a.value_for(k) {
                                    if best.as_ref().is_none_or(|b| !b.2 && is_id) {
                                        best = Some((k.clone(), v, is_id));
                                    }
                                }
                            }
                            let (k, v, is_id) =
                                best.unwrap_or_else(|| panic!("{label}: nothing of A for {name}"));
                            query.push((k, v.as_str().unwrap().to_owned()));
                            names_a |= is_id;
                        } else if let Some((v, is_id)) = a.value_for(name) {
                            query.push((name.to_owned(), v.as_str().unwrap().to_owned()));
                            names_a |= is_id;
                        } else if name == "wait_ms" {
                            // Wait for effects, so that nothing is left in flight.
                            query.push((name.to_owned(), "5000".to_owned()));
                        } else if p["required"] == true {
                            let v = sample(doc, p)
                                .or_else(|| sample(doc, &p["schema"]))
                                .unwrap_or_else(|| panic!("{label}: no sample for {name}"));
                            let v = match v {
                                Value::String(s) => s,
                                other => other.to_string(),
                            };
                            query.push((name.to_owned(), v));
                        }
                    }
                    _ => {}
                }
            }
            // Every example body is a request of its own (a purchase by member id, by phone,
            // anonymous...); an operation without a body is one request.
            let bodies: Vec<Option<(String, Value)>> = match op.get("requestBody") {
                None => vec![None],
                Some(rb) => {
                    let content = &rb["content"]["application/json"];
                    let mut out: Vec<Option<(String, Value)>> = content["examples"]
                        .as_object()
                        .map(|e| {
                            e.iter()
                                .map(|(n, e)| Some((n.clone(), e["value"].clone())))
                                .collect()
                        })
                        .unwrap_or_default();
                    if out.is_empty() {
                        let v = sample(doc, &content["schema"])
                            .unwrap_or_else(|| panic!("{label}: no example body"));
                        out.push(Some(("schema".into(), v)));
                    }
                    out
                }
            };
            let security = op.get("security").unwrap_or(&global_security);
            let roles: Vec<String> = op["x-roles"]
                .as_array()
                .map(|r| r.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            for body in bodies {
                let (label, body, names_a) = match body {
                    None => (label.clone(), None, names_a),
                    Some((example, mut v)) => {
                        let named = fill_body(&mut v, a, &mut serial);
                        (format!("{label} ({example})"), Some(v), names_a || named)
                    }
                };
                out.push(Call {
                    label,
                    method: m.clone(),
                    path: path.clone(),
                    query: query.clone(),
                    body,
                    names_a,
                    public: security.as_array().is_some_and(|s| s.is_empty()),
                    roles: roles.clone(),
                });
            }
        }
    }
    out
}

impl Call {
    /// Whether the request itself carries `text` (in its path, query or body).
    fn says(&self, text: &str) -> bool {
        self.path.contains(text)
            || self.query.iter().any(|(_, v)| v.contains(text))
            || self
                .body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(text))
    }
}

async fn send(app: &TestApp, c: &Call, key: Option<&str>) -> (StatusCode, String) {
    let mut url = reqwest::Url::parse(&app.url(&c.path)).expect("url");
    if !c.query.is_empty() {
        url.query_pairs_mut().extend_pairs(&c.query);
    }
    let mut req = app.client.request(c.method.clone(), url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = &c.body {
        req = req.json(b);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_operation_of_the_document_lets_another_franchise_reach_a_tenant() {
    let app = spawn_app().await;
    let a = victim(&app).await;
    let b = app.franchise("Bravo Other Franchise").await;
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", b.id),
            &b.hq_key,
            &json!({"role": "hq_read_only"}),
        )
        .await;
    let b_read_only = created(r).await["api_key"].as_str().unwrap().to_owned();
    let doc: Value = serde_json::from_str(DOC).expect("the document is JSON");
    let keys_of_b = [
        ("B's HQ key", b.hq_key.as_str()),
        ("B's read-only HQ key", b_read_only.as_str()),
        ("B's store key", b.store_key.as_str()),
    ];
    let calls = calls(&doc, &a);
    assert!(calls.len() >= 20, "only {} operations read", calls.len());
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in &calls {
        let rule = if c.public {
            "public"
        } else if c.roles == ["admin"] {
            "admin only"
        } else if c.roles.is_empty() {
            failures.push(format!(
                "{}: needs a key but lists no x-roles: neither covered nor explained",
                c.label
            ));
            continue;
        } else if c.names_a {
            "names A"
        } else {
            "acts in the caller's franchise"
        };
        *tally.entry(rule).or_default() += 1;
        let keys: Vec<(&str, Option<&str>)> = if c.public {
            vec![("no key", None), ("B's HQ key", Some(b.hq_key.as_str()))]
        } else {
            keys_of_b.iter().map(|(n, k)| (*n, Some(*k))).collect()
        };
        for (who, key) in keys {
            let (status, body) = send(&app, c, key).await;
            let what = format!("{} with {who} ({rule}) answered {status}", c.label);
            for (name, secret) in a.secrets() {
                // An answer may repeat what the request said (`unknown-purchase` names the
                // purchase asked for); anything else of A's is a leak.
                if body.contains(&secret) && !c.says(&secret) {
                    failures.push(format!("{what} holding {name}: {body:.300}"));
                }
            }
            if status.is_server_error() {
                failures.push(format!("{what}: {body:.300}"));
            }
            let ok = match rule {
                "admin only" => status == StatusCode::FORBIDDEN,
                "names A" => matches!(status.as_u16(), 401 | 403 | 404),
                _ => true,
            };
            if !ok {
                failures.push(format!("{what}: {body:.300}"));
            }
        }
        // The control: A's own key reaches what the request names.
        if c.names_a && c.method == Method::GET {
            let own = [
                ("hq", a.hq_key.as_str()),
                ("store", a.store_key.as_str()),
                ("hq_read_only", a.read_only_key.as_str()),
            ];
            let (role, key) = own
                .iter()
                .find(|(r, _)| c.roles.iter().any(|x| x == r))
                .copied()
                .unwrap_or_else(|| panic!("{}: no key of A for roles {:?}", c.label, c.roles));
            let (status, body) = send(&app, c, Some(key)).await;
            if !status.is_success() {
                failures.push(format!(
                    "control: {} with A's {role} key answered {status} (the request does not name A's resource?): {body:.300}",
                    c.label
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for rule in ["public", "admin only", "names A"] {
        assert!(
            tally.get(rule).is_some_and(|n| *n > 0),
            "no operation under {rule}: {tally:?}"
        );
    }
    // A is whole: its keys work, none was revoked, its member untouched.
    let r = app
        .get(&format!("/v1/franchises/{}/api-keys", a.fid), &a.hq_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = r.json().await.unwrap();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{listed}");
    assert!(keys.iter().all(|k| k["active"] == true), "{listed}");
    let r = app
        .get(&format!("/v1/members/{}", a.member), &a.store_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["points"], 300, "{status}");
    println!("tenant isolation: {} operations, {tally:?}", calls.len());
}

/// The rules above would pass vacuously if every request failed for a reason of its own: the
/// generator's requests made with A's keys on A's GET operations succeed (checked above), and
/// here a body generated for a write names A's member.
#[test]
fn generated_bodies_name_the_victim() {
    let doc: Value = serde_json::from_str(DOC).unwrap();
    let a = Victim {
        fid: "f_a".into(),
        sid: "s_a".into(),
        member: "m_a".into(),
        qr: "m_a.q".into(),
        hq_key: "lk_hq_a".into(),
        store_key: "lk_store_a".into(),
        read_only_key: "lk_hqro_a".into(),
        store_key_id: "k_a".into(),
        hq_key_id: "k_h".into(),
    };
    let calls = calls(&doc, &a);
    let purchase = calls
        .iter()
        .find(|c| {
            c.label.starts_with("POST /v1/purchases")
                && c.body
                    .as_ref()
                    .is_some_and(|b| b.get("member_id").is_some())
        })
        .expect("a purchase by member id documented");
    assert!(purchase.names_a);
    assert_eq!(purchase.body.as_ref().unwrap()["member_id"], "m_a");
    let rotate = calls
        .iter()
        .find(|c| c.label == "POST /v1/franchises/{fid}/api-keys/{kid}/rotate")
        .expect("rotation documented");
    assert_eq!(rotate.path, "/v1/franchises/f_a/api-keys/k_a/rotate");
}
