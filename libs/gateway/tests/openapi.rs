//! The OpenAPI document served at `/openapi.json` must describe the API as the code has it:
//! every route registered in `configure` is documented (and nothing else is), every `$ref`
//! resolves, and the documented shapes, codes and bounds are those of the real types.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::body::MessageBody;
use actix_web::ResponseError;
use loyalty_domain::{
    Cents, EventId, LedgerEntry, MemberStatus, Outcome, Program, Rejection, RewardId,
};
use loyalty_gateway::routes::{ops::OPENAPI, MAX_WAIT_MS};
use loyalty_gateway::ApiError;
use serde_json::Value;

/// Every route of API v1 and the operations endpoints, as registered in `configure`.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/franchises"),
    ("post", "/v1/admin/cache/rebuild"),
    ("put", "/v1/franchises/{fid}/program"),
    ("get", "/v1/franchises/{fid}/program"),
    ("post", "/v1/franchises/{fid}/stores"),
    ("post", "/v1/members"),
    ("get", "/v1/members/lookup"),
    ("get", "/v1/members/{member_id}"),
    ("get", "/v1/members/{member_id}/ledger"),
    ("post", "/v1/purchases"),
    ("post", "/v1/refunds"),
    ("post", "/v1/redemptions"),
];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The source of `configure`, read at test time so a route added later is seen.
const LIB_RS: &str = include_str!("../src/lib.rs");

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON")
}

/// The documented operations, as (lower-case method, path).
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for (method, _) in item.as_object().expect("a path item is an object") {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

/// Reads a Rust string literal starting at `bytes[i]` (the opening quote); returns its text
/// and the index after the closing quote.
fn string_literal(src: &str, i: usize) -> (String, usize) {
    let bytes = src.as_bytes();
    assert_eq!(bytes[i], b'"');
    let mut j = i + 1;
    while bytes[j] != b'"' {
        if bytes[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    (src[i + 1..j].to_owned(), j + 1)
}

/// actix path patterns (`{id}`, `{id:regex}`) as OpenAPI templates (`{id}`).
fn openapi_path(p: &str) -> String {
    let mut out = String::new();
    let mut in_var = false;
    let mut skipping = false;
    for c in p.chars() {
        match c {
            '{' => {
                in_var = true;
                out.push(c);
            }
            '}' if in_var => {
                in_var = false;
                skipping = false;
                out.push(c);
            }
            ':' if in_var => skipping = true,
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    out
}

/// The `(method, path)` pairs registered by `configure` in lib.rs: every
/// `.route("…", web::METHOD()` with the prefixes of the `web::scope("…")` it is chained on.
fn registered(src: &str) -> Vec<(String, String)> {
    let start = src
        .find("pub fn configure")
        .expect("lib.rs has `pub fn configure`");
    let src = &src[start..];
    let bytes = src.as_bytes();
    let mut routes = Vec::new();
    let mut parens: i32 = 0;
    let mut braces: i32 = 0;
    let mut opened = false;
    // (paren depth of the scope's chain, full prefix)
    let mut scopes: Vec<(i32, String)> = Vec::new();
    let mut handlers = 0;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
            continue;
        }
        if rest.starts_with("web::scope(\"") {
            let (prefix, next) = string_literal(src, i + "web::scope(".len());
            let full = format!("{}{}", scopes.last().map_or("", |s| s.1.as_str()), prefix);
            scopes.push((parens, full));
            i = next;
            // The `(` of `web::scope(` was skipped with the literal: its `)` follows.
            assert_eq!(bytes[i], b')', "web::scope takes one literal");
            i += 1;
            continue;
        }
        let route_literal = rest
            .strip_prefix(".route(")
            .map(|r| r.len() - r.trim_start().len())
            .filter(|ws| rest[".route(".len() + ws..].starts_with('"'));
        if let Some(ws) = route_literal {
            let (path, next) = string_literal(src, i + ".route(".len() + ws);
            let after = src[next..].trim_start_matches([',', ' ', '\n', '\r', '\t']);
            let after = after
                .strip_prefix("web::")
                .unwrap_or_else(|| panic!("route {path}: expected `web::METHOD()`"));
            let method: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                HTTP_METHODS.contains(&method.as_str()),
                "route {path}: `web::{method}` is not an HTTP method guard"
            );
            let prefix = scopes.last().map_or("", |s| s.1.as_str());
            routes.push((method, openapi_path(&format!("{prefix}{path}"))));
            // `.route(` opens a parenthesis that the literal skipped.
            parens += 1;
            i = next;
            continue;
        }
        if rest.starts_with(".to(") {
            handlers += 1;
        }
        match bytes[i] {
            b'"' => {
                i = string_literal(src, i).1;
                continue;
            }
            b'(' => parens += 1,
            b')' => {
                parens -= 1;
                while scopes.last().is_some_and(|s| parens < s.0) {
                    scopes.pop();
                }
            }
            b'{' => {
                braces += 1;
                opened = true;
            }
            b'}' => {
                braces -= 1;
                if opened && braces == 0 {
                    break;
                }
            }
            _ => {}
        }
        i += 1;
    }
    assert_eq!(
        handlers,
        routes.len(),
        "configure registers handlers in a form this test does not read (only `.route(\"…\", web::METHOD().to(…))` is); extend `registered`"
    );
    routes
}

#[test]
fn is_openapi_3_1() {
    let d = doc();
    let v = d["openapi"].as_str().expect("`openapi` is a string");
    assert!(v.starts_with("3.1"), "openapi is {v}");
    assert!(d["info"]["title"].is_string() && d["info"]["version"].is_string());
}

#[test]
fn the_route_extractor_reads_lib_rs() {
    let found: BTreeSet<(String, String)> = registered(LIB_RS).into_iter().collect();
    for (m, p) in ROUTES {
        assert!(
            found.contains(&(m.to_string(), p.to_string())),
            "{} {p} not found in lib.rs by the extractor (found {found:?})",
            m.to_uppercase()
        );
    }
}

#[test]
fn every_route_is_documented() {
    let documented = documented(&doc());
    let mut missing = BTreeSet::new();
    let listed = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string()));
    for (m, p) in listed.chain(registered(LIB_RS)) {
        if !documented.contains(&(m.clone(), p.clone())) {
            missing.insert(format!("{} {p}", m.to_uppercase()));
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
}

#[test]
fn only_registered_routes_are_documented() {
    let registered: BTreeSet<(String, String)> = registered(LIB_RS).into_iter().collect();
    let extra: Vec<_> = documented(&doc())
        .into_iter()
        .filter(|r| !registered.contains(r))
        .collect();
    assert!(extra.is_empty(), "documented but not registered: {extra:?}");
}

fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves() {
    let d = doc();
    let mut refs = Vec::new();
    collect_refs(&d, &mut refs);
    assert!(refs.len() > 50, "the document uses components");
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .filter(|p| p.starts_with("/components/"))
            .unwrap_or_else(|| panic!("$ref {r} is not a local component"));
        assert!(d.pointer(pointer).is_some(), "$ref {r} does not resolve");
    }
}

/// Follows a `$ref` to its target.
fn deref<'a>(d: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => deref(d, d.pointer(&r[1..]).unwrap_or_else(|| panic!("{r}"))),
        None => v,
    }
}

fn operations(d: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in d["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.push((method.clone(), path.clone(), op));
            }
        }
    }
    out
}

#[test]
fn api_operations_declare_security_roles_and_errors() {
    let d = doc();
    assert_eq!(
        d["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    for (method, path, op) in operations(&d) {
        let name = format!("{} {path}", method.to_uppercase());
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no responses"));
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{name}: no success response"
        );
        for (status, r) in responses {
            let r = deref(&d, r);
            assert!(
                r["description"].is_string(),
                "{name} {status}: no description"
            );
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &r["content"]["application/problem+json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/Problem",
                    "{name} {status}: not a problem"
                );
            }
        }
        if path.starts_with("/v1/") {
            assert_eq!(
                op["security"],
                serde_json::json!([{ "bearerAuth": [] }]),
                "{name}"
            );
            let roles = op["x-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: no x-roles"));
            let desc = op["description"].as_str().unwrap();
            for r in roles {
                let r = r.as_str().unwrap();
                assert!(["admin", "hq", "store"].contains(&r), "{name}: role {r}");
                assert!(
                    desc.contains(r),
                    "{name}: description does not name role {r}"
                );
            }
            for s in ["401", "403", "500", "503"] {
                assert!(responses.contains_key(s), "{name}: no {s}");
            }
            if op.get("requestBody").is_some() {
                for s in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(s), "{name}: has a body but no {s}");
                }
            }
        } else {
            assert_eq!(op["security"], serde_json::json!([]), "{name} needs no key");
        }
    }
}

/// The keys of a schema's `properties` (merging `allOf`).
fn properties(d: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = deref(d, schema);
    let mut out: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(properties(d, part));
    }
    out
}

fn required(d: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = deref(d, schema);
    let mut out: BTreeSet<String> = schema["required"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(required(d, part));
    }
    out
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

/// A value the server emits has exactly the documented properties, all of them required.
fn assert_exact_shape(d: &Value, schema: &str, v: &Value) {
    let s = serde_json::json!({ "$ref": format!("#/components/schemas/{schema}") });
    assert_eq!(
        properties(d, &s),
        keys(v),
        "{schema}: documented properties differ from the code's"
    );
    assert_eq!(
        required(d, &s),
        keys(v),
        "{schema}: every emitted field is required"
    );
}

fn schema_example(d: &Value, schema: &str) -> Value {
    d["components"]["schemas"][schema]["examples"][0].clone()
}

#[test]
fn member_status_and_ledger_match_the_domain_types() {
    let d = doc();
    let ex = schema_example(&d, "MemberStatus");
    let typed: MemberStatus =
        serde_json::from_value(ex.clone()).expect("example is a MemberStatus");
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back, ex);
    assert_exact_shape(&d, "MemberStatus", &back);
    assert_exact_shape(&d, "NextTier", &back["next_tier"]);

    let ex = schema_example(&d, "LedgerEntry");
    let typed: LedgerEntry = serde_json::from_value(ex.clone()).expect("example is a LedgerEntry");
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back, ex);
    assert_exact_shape(&d, "LedgerEntry", &back);
    let kinds = d["components"]["schemas"]["LedgerKind"]["enum"]
        .as_array()
        .unwrap();
    for k in kinds {
        let _: loyalty_domain::LedgerKind =
            serde_json::from_value(k.clone()).expect("a LedgerKind");
    }
}

#[test]
fn program_matches_the_domain_type() {
    let d = doc();
    let demo = serde_json::to_value(Program::demo()).unwrap();
    assert_exact_shape(&d, "Program", &demo);
    assert_exact_shape(&d, "StampCard", &demo["stamp_card"]);
    assert_exact_shape(&d, "TierQualification", &demo["tier_qualification"]);
    assert_exact_shape(&d, "Tier", &demo["tiers"][0]);
    assert_exact_shape(&d, "Reward", &demo["rewards"][0]);
    assert_eq!(
        schema_example(&d, "Program"),
        demo,
        "the Program example is the demo program"
    );
    // What HQ sends: the same fields; those with a default may be left out.
    let spec = serde_json::json!({ "$ref": "#/components/schemas/ProgramSpec" });
    assert_eq!(properties(&d, &spec), keys(&demo));
    let minimal: serde_json::Map<String, Value> = demo
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| required(&d, &spec).contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::from_value::<Program>(Value::Object(minimal))
        .expect("the required fields alone make a program");
    let p: Program =
        serde_json::from_value(schema_example(&d, "ProgramSpec")).expect("a valid program");
    assert_eq!(p, Program::demo());
}

/// Every value under an `outcome` key in the document's examples.
fn outcome_examples(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "outcome" && x.get("type").is_some() {
                    out.push(x.clone());
                } else {
                    outcome_examples(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| outcome_examples(x, out)),
        _ => {}
    }
}

#[test]
fn outcomes_match_the_domain_type() {
    let d = doc();
    let mapping = d["components"]["schemas"]["Outcome"]["discriminator"]["mapping"].clone();
    let mut examples = Vec::new();
    outcome_examples(&d["paths"], &mut examples);
    let mut types = BTreeSet::new();
    for ex in examples {
        let typed: Outcome = serde_json::from_value(ex.clone()).expect("example is an Outcome");
        assert!(
            typed.rejection().is_none(),
            "a 200 never carries a rejection"
        );
        let back = serde_json::to_value(&typed).unwrap();
        assert_eq!(back, ex);
        let t = ex["type"].as_str().unwrap().to_owned();
        let schema = serde_json::json!({ "$ref": mapping[&t].as_str().unwrap_or_else(|| panic!("no mapping for {t}")) });
        assert_eq!(properties(&d, &schema), keys(&back), "outcome {t}");
        assert_eq!(required(&d, &schema), keys(&back), "outcome {t}");
        types.insert(t);
    }
    for t in ["purchase", "anonymous_sale", "refund", "redemption"] {
        assert!(types.contains(t), "no example of a {t} outcome");
    }
}

fn every_error() -> Vec<ApiError> {
    let reward = RewardId::parse("free-coffee").unwrap();
    let event = EventId::parse("pos1-0001").unwrap();
    vec![
        ApiError::Unauthorized,
        ApiError::Forbidden("a store key cannot do this"),
        ApiError::NotFound("no such franchise".into()),
        ApiError::MalformedJson("EOF".into()),
        ApiError::Invalid("bad".into()),
        ApiError::PayloadTooLarge { limit: 16384 },
        ApiError::UnsupportedMediaType,
        ApiError::IdempotencyConflict("pos1-0001".into()),
        ApiError::ProgramConflict("another update took version 3".into()),
        ApiError::Rejected(Rejection::InsufficientPoints {
            needed: 100,
            available: 62,
        }),
        ApiError::Rejected(Rejection::UnknownMember),
        ApiError::Rejected(Rejection::UnknownReward { reward_id: reward }),
        ApiError::Rejected(Rejection::UnknownPurchase {
            purchase_event_id: event,
        }),
        ApiError::Rejected(Rejection::RefundExceedsPurchase {
            remaining_cents: 1250,
        }),
        ApiError::Rejected(Rejection::CurrencyMismatch {
            expected: "EUR".into(),
        }),
        ApiError::AnonymousRefund,
        ApiError::Unavailable("down".into()),
        ApiError::Internal("bug".into()),
    ]
}

/// Every (status, code) of the problem examples of the operations.
fn documented_problems(d: &Value) -> BTreeMap<String, BTreeSet<u16>> {
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for (_, _, op) in operations(d) {
        for (status, r) in op["responses"].as_object().unwrap() {
            let r = deref(d, r);
            let Some(examples) = r["content"]["application/problem+json"]["examples"].as_object()
            else {
                continue;
            };
            for ex in examples.values() {
                let v = &ex["value"];
                assert_eq!(
                    v["status"].as_u64().unwrap().to_string(),
                    *status,
                    "example {v} under {status}"
                );
                out.entry(v["code"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert(status.parse().unwrap());
            }
        }
    }
    out
}

#[test]
fn problems_match_the_error_type() {
    let d = doc();
    let codes: BTreeSet<String> = d["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let problem = serde_json::json!({ "$ref": "#/components/schemas/Problem" });
    let props = properties(&d, &problem);
    let documented = documented_problems(&d);
    for e in every_error() {
        let status = e.status_code().as_u16();
        let body = e
            .error_response()
            .into_body()
            .try_into_bytes()
            .unwrap_or_else(|_| panic!("a problem body"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            codes.contains(e.code()),
            "code {} not in ProblemCode",
            e.code()
        );
        assert_eq!(v["code"], e.code());
        assert_eq!(v["type"], format!("urn:loyalty:problem:{}", e.code()));
        assert!(
            keys(&v).is_subset(&props),
            "{}: fields {:?} not all documented",
            e.code(),
            keys(&v)
        );
        assert!(required(&d, &problem).is_subset(&keys(&v)));
        let statuses = documented
            .get(e.code())
            .unwrap_or_else(|| panic!("no example of {}", e.code()));
        assert_eq!(
            statuses,
            &BTreeSet::from([status]),
            "{} is answered {status}",
            e.code()
        );
    }
}

#[test]
fn documented_bounds_are_the_codes() {
    let d = doc();
    let s = &d["components"]["schemas"];
    assert_eq!(s["AmountCents"]["maximum"].as_u64(), Some(Cents::MAX));
    assert_eq!(s["AmountCents"]["minimum"].as_u64(), Some(0));
    let ev = s["EventId"]["pattern"].as_str().unwrap();
    assert_eq!(ev, format!("^[A-Za-z0-9_.:-]{{1,{}}}$", EventId::MAX_LEN));
    for p in ["WaitMs", "WaitMsDefault"] {
        assert_eq!(
            d["components"]["parameters"][p]["schema"]["maximum"].as_u64(),
            Some(MAX_WAIT_MS)
        );
    }
    assert_eq!(
        d["components"]["parameters"]["WaitMsDefault"]["schema"]["default"].as_u64(),
        Some(2000)
    );
    assert_eq!(s["Phone"]["pattern"], "^\\+[1-9][0-9]{7,14}$");
    // The phone pattern says what Phone::parse says.
    for (phone, ok) in [
        ("+33612345678", true),
        ("+1234567", false),
        ("+0612345678", false),
        ("33612345678", false),
    ] {
        assert_eq!(loyalty_domain::Phone::parse(phone).is_ok(), ok, "{phone}");
    }
}

#[test]
fn the_route_extractor_follows_scopes_and_skips_comments() {
    let src = r#"
pub fn configure(cfg: &mut web::ServiceConfig) {
    use routes::{a, b};
    // .route("/commented", web::get().to(a::x))
    cfg.route("/top", web::get().to(a::top))
        .service(
            web::scope("/v2")
                .route("/items/{id:\d+}", web::delete().to(a::del))
                .service(web::scope("/inner").route("/x", web::patch().to(b::x)))
                .route("/after", web::post().to(b::after)),
        )
        .route("/last", web::put().to(b::last))
        .default_service(web::to(nf));
}
fn other() { x.route("/not-configure", web::get().to(y)); }
"#;
    let got = registered(src);
    let want: Vec<(String, String)> = [
        ("get", "/top"),
        ("delete", "/v2/items/{id}"),
        ("patch", "/v2/inner/x"),
        ("post", "/v2/after"),
        ("put", "/last"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}
