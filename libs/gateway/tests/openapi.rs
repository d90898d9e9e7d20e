//! The OpenAPI document served at `/openapi.json` must describe the API as the code has it:
//! every route registered in `configure` is documented (and nothing else is), every `$ref`
//! resolves, and the documented shapes, codes and bounds are those of the real types.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::body::MessageBody;
use actix_web::ResponseError;
use loyalty_core::dashboard::{Dashboard, Period, RewardRow, SeriesDay, StoreRow, TierRow};
use loyalty_domain::dashboard::{DayTotals, VisitCounts};
use loyalty_domain::kpi::{round2, KpiInput, Kpis};
use loyalty_domain::{
    Cents, Day, EventId, FranchiseId, LedgerEntry, MemberStatus, Outcome, Program, Rejection,
    RewardId, StoreId,
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
    ("post", "/v1/redemption-cancellations"),
    ("post", "/v1/redemption-codes/consume"),
    ("get", "/v1/franchises/{fid}/dashboard"),
    ("get", "/v1/franchises/{fid}/dashboard.csv"),
    ("get", "/v1/franchises/{fid}/campaigns"),
    ("get", "/v1/franchises/{fid}/api-keys"),
    ("post", "/v1/franchises/{fid}/api-keys"),
    ("get", "/v1/franchises/{fid}/api-keys/{kid}"),
    ("post", "/v1/franchises/{fid}/api-keys/{kid}/rotate"),
    ("post", "/v1/franchises/{fid}/api-keys/{kid}/revoke"),
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
/// `.route("…", web::METHOD()` and every `.METHOD(handler)` chained on an `endpoint("…")`, with
/// the prefixes of the `web::scope("…")` it is chained on.
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
    // (paren depth of the endpoint's chain, full path)
    let mut endpoints: Vec<(i32, String)> = Vec::new();
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
        if rest.starts_with("endpoint(\"") {
            let (path, next) = string_literal(src, i + "endpoint(".len());
            let prefix = scopes.last().map_or("", |s| s.1.as_str());
            endpoints.push((parens, openapi_path(&format!("{prefix}{path}"))));
            i = next;
            assert_eq!(bytes[i], b')', "endpoint takes one literal");
            i += 1;
            continue;
        }
        if let Some((depth, path)) = endpoints.last() {
            let method = ["get", "post", "put", "delete", "patch"]
                .into_iter()
                .find(|m| rest.starts_with(&format!(".{m}(")));
            if let (Some(m), true) = (method, *depth == parens) {
                routes.push((m.to_owned(), path.clone()));
                handlers += 1;
                i += m.len() + 1;
                continue;
            }
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
                while endpoints.last().is_some_and(|s| parens < s.0) {
                    endpoints.pop();
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
        "configure registers handlers in a form this test does not read (only `.route(\"…\", web::METHOD().to(…))` and `endpoint(\"…\").METHOD(…)` are); extend `registered`"
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
                assert!(
                    ["admin", "hq", "hq_read_only", "store"].contains(&r),
                    "{name}: role {r}"
                );
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
    // `erased` is only emitted when true (README "Privacy"), `next_expiry` only when the
    // program expires points and the member has some (README "The scheduler"): documented,
    // not required.
    let status = serde_json::json!({ "$ref": "#/components/schemas/MemberStatus" });
    let mut emitted = keys(&back);
    assert_eq!(
        required(&d, &status),
        emitted,
        "MemberStatus: every emitted field is required"
    );
    emitted.insert("erased".to_owned());
    emitted.insert("next_expiry".to_owned());
    // `tier_downgrade` only while a downgrade is due after a grace period (README "Tiers").
    emitted.insert("tier_downgrade".to_owned());
    // `held_refunds` only while some are held (README "Refunds and voids").
    emitted.insert("held_refunds".to_owned());
    // `segments` only when the member is in some (README "Segments").
    emitted.insert("segments".to_owned());
    // `redemption_codes` only while some are outstanding (README "Redemption codes").
    emitted.insert("redemption_codes".to_owned());
    assert_eq!(
        properties(&d, &status),
        emitted,
        "MemberStatus: documented properties"
    );
    let mut erased = typed.clone();
    erased.erased = true;
    assert_eq!(serde_json::to_value(&erased).unwrap()["erased"], true);
    assert_exact_shape(&d, "NextTier", &back["next_tier"]);
    let mut held = typed.clone();
    held.held_refunds = vec![serde_json::from_value(schema_example(&d, "HeldRefundDue"))
        .expect("the HeldRefundDue example is one")];
    assert_exact_shape(
        &d,
        "HeldRefundDue",
        &serde_json::to_value(&held).unwrap()["held_refunds"][0],
    );
    let mut coded = typed.clone();
    coded.redemption_codes =
        vec![serde_json::from_value(schema_example(&d, "CodeDue"))
            .expect("the CodeDue example is one")];
    assert_exact_shape(
        &d,
        "CodeDue",
        &serde_json::to_value(&coded).unwrap()["redemption_codes"][0],
    );
    let mut due = typed.clone();
    due.tier_downgrade = serde_json::from_value(schema_example(&d, "TierDowngradeDue")).ok();
    assert!(
        due.tier_downgrade.is_some(),
        "the TierDowngradeDue example is one"
    );
    assert_exact_shape(
        &d,
        "TierDowngradeDue",
        &serde_json::to_value(&due).unwrap()["tier_downgrade"],
    );

    let ex = schema_example(&d, "LedgerEntry");
    let typed: LedgerEntry = serde_json::from_value(ex.clone()).expect("example is a LedgerEntry");
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back, ex);
    // `tier_change` is on `tier` entries only: documented, not required.
    let ledger = serde_json::json!({ "$ref": "#/components/schemas/LedgerEntry" });
    assert_eq!(required(&d, &ledger), keys(&back), "LedgerEntry: required");
    let mut documented = keys(&back);
    documented.insert("tier_change".to_owned());
    assert_eq!(
        properties(&d, &ledger),
        documented,
        "LedgerEntry: documented"
    );
    let tier_entry = LedgerEntry {
        kind: loyalty_domain::LedgerKind::Tier,
        points: 0,
        detail: "tier:period_end".into(),
        tier_change: serde_json::from_value(schema_example(&d, "TierChange")).ok(),
        ..typed
    };
    assert!(
        tier_entry.tier_change.is_some(),
        "the TierChange example is one"
    );
    let tier_entry = serde_json::to_value(&tier_entry).unwrap();
    assert_exact_shape(&d, "TierChange", &tier_entry["tier_change"]);
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
    // `segments` is emitted only when the program has them (README "Segments"): documented,
    // not required; with them, every field of theirs is.
    let segmented = segmented_demo();
    let program = serde_json::json!({ "$ref": "#/components/schemas/Program" });
    // `redemption_codes` likewise, only when the program offers codes.
    let coded = coded_demo();
    assert_exact_shape(&d, "RedemptionCodes", &coded["redemption_codes"]);
    // `campaigns` likewise, only when the program has some (`campaigns_match_the_domain_type`).
    let optional = |mut k: BTreeSet<String>| {
        k.insert("redemption_codes".to_owned());
        k.insert("campaigns".to_owned());
        k
    };
    assert_eq!(properties(&d, &program), optional(keys(&segmented)));
    assert_eq!(required(&d, &program), keys(&demo));
    assert_exact_shape(&d, "Segments", &segmented["segments"]);
    assert_exact_shape(&d, "CustomSegment", &segmented["segments"]["custom"][0]);
    assert_eq!(
        properties(
            &d,
            &serde_json::json!({ "$ref": "#/components/schemas/Segments" })
        ),
        keys(&segmented["segments"])
    );
    let spec_ex = schema_example(&d, "SegmentsSpec");
    let mut with = demo.clone();
    with["segments"] = spec_ex;
    serde_json::from_value::<Program>(with).expect("the SegmentsSpec example is valid");
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
    assert_eq!(properties(&d, &spec), optional(keys(&segmented)));
    let mut with = demo.clone();
    with["redemption_codes"] = schema_example(&d, "RedemptionCodesSpec");
    serde_json::from_value::<Program>(with).expect("the RedemptionCodesSpec example is valid");
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
    // A reward as HQ writes it: the same fields, `cost_cents` may be left out.
    let reward_spec = serde_json::json!({ "$ref": "#/components/schemas/RewardSpec" });
    assert_eq!(properties(&d, &reward_spec), keys(&demo["rewards"][0]));
    // The programs of the operations' examples: valid, and those the server answers are in
    // its exact form.
    let franchises = &d["paths"]["/v1/franchises"]["post"];
    let program = &d["paths"]["/v1/franchises/{fid}/program"];
    let json = |v: &Value| v["content"]["application/json"]["examples"].clone();
    let sent = [
        &json(&franchises["requestBody"])["demo"],
        &json(&program["put"]["requestBody"])["demo"],
    ];
    let answered = [
        &json(&program["get"]["responses"]["200"])["demo"],
        &json(&program["put"]["responses"]["200"])["replaced"],
    ];
    for (i, ex) in sent.iter().chain(&answered).enumerate() {
        let v = &ex["value"]["program"];
        let p: Program = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("program example {i} is invalid: {e}"));
        if i >= sent.len() {
            assert_eq!(
                &serde_json::to_value(&p).unwrap(),
                v,
                "answered example {i}"
            );
        }
    }
    // The replacement shows the dashboards' settings, and is answered as it was sent.
    let replaced: Program = serde_json::from_value(sent[1]["value"]["program"].clone()).unwrap();
    assert_ne!(replaced.time_zone, Program::demo().time_zone);
    assert!(replaced.monthly_fee_cents.is_some());
    let replaced_json = serde_json::to_value(&replaced).unwrap();
    assert_exact_shape(&d, "BirthdayReward", &replaced_json["birthday_reward"]);
    assert_eq!(replaced_json["tier_qualification"]["period"], "year");
    assert_eq!(
        serde_json::to_value(&replaced).unwrap(),
        answered[1]["value"]["program"]
    );
}

/// The demo program with segments (the defaults and one custom filter), as the server
/// answers it.
fn segmented_demo() -> Value {
    let mut p = serde_json::to_value(Program::demo()).unwrap();
    p["segments"] =
        serde_json::json!({ "custom": [{ "name": "big-spenders", "min_spend_cents": 50000 }] });
    let p: Program = serde_json::from_value(p).expect("a program with segments");
    serde_json::to_value(p).unwrap()
}

/// The demo program with redemption codes, as the server answers it.
fn coded_demo() -> Value {
    let mut p = serde_json::to_value(Program::demo()).unwrap();
    p["redemption_codes"] = serde_json::json!({ "valid_days": 7 });
    let p: Program = serde_json::from_value(p).expect("a program with codes");
    serde_json::to_value(p).unwrap()
}

/// The sizes and the export of segments have the documented shapes: the core's types,
/// serialized, against the schemas and their examples.
#[test]
fn segments_match_the_core_types() {
    use loyalty_core::segments::{ExportPage, ExportedMember, SegmentSize, SegmentSizes, SizeOn};
    let d = doc();
    let sizes = SegmentSizes {
        franchise_id: loyalty_domain::FranchiseId::parse("f_6df97957f5054860bf75").unwrap(),
        time_zone: "Europe/Paris".into(),
        from: "2026-11-03".into(),
        to: "2026-11-04".into(),
        segments: vec![SegmentSize {
            name: "new".into(),
            kind: "built_in",
            size: 2,
            series: vec![SizeOn {
                date: "2026-11-03".into(),
                size: 2,
            }],
        }],
    };
    let v = serde_json::to_value(&sizes).unwrap();
    assert_exact_shape(&d, "SegmentSizes", &v);
    assert_exact_shape(&d, "SegmentSize", &v["segments"][0]);
    assert_exact_shape(&d, "SegmentSizeOn", &v["segments"][0]["series"][0]);
    let ex = schema_example(&d, "SegmentSizes");
    assert_eq!(keys(&ex), keys(&v));
    assert_eq!(keys(&ex["segments"][0]), keys(&v["segments"][0]));
    let page = ExportPage {
        segment: "at_risk".into(),
        phone: "masked",
        members: vec![ExportedMember {
            member_id: loyalty_domain::MemberId::parse("mwwqj2m2mbhakrt6n4epzn3le").unwrap(),
            phone: "+33*******78".into(),
            tier: "Bronze".into(),
            visits: 3,
            spend_cents: 4200,
            points: 92,
            enrolled_on: "2026-08-01".into(),
            last_visit_on: Some("2026-09-02".into()),
            segments: vec!["at_risk".into()],
        }],
        next_after: None,
    };
    let v = serde_json::to_value(&page).unwrap();
    assert_exact_shape(&d, "SegmentExport", &v);
    assert_exact_shape(&d, "SegmentMember", &v["members"][0]);
    assert_eq!(
        schema_example(&d, "SegmentExport"),
        v,
        "the example is the core's form"
    );
    let limit =
        &d["paths"]["/v1/franchises/{fid}/segments/{segment}/members"]["get"]["parameters"][0];
    assert_eq!(
        limit["schema"]["maximum"].as_u64(),
        Some(loyalty_core::segments::MAX_EXPORT_LIMIT as u64)
    );
}

/// The stores of the dashboard examples (as `store_rows` lists them: by id).
const PARIS: (&str, &str) = ("s_05c6ca8115024a0a91f8", "Demo Coffee Paris");
const LYON: (&str, &str) = ("s_1afd3f08581247de896f", "Demo Coffee Lyon");
/// The first day of the examples' range (3 days, 2026-11-02 to 2026-11-04).
const EXAMPLE_FROM: &str = "2026-11-02";
const EXAMPLE_DAYS: u32 = 3;

/// `[member_purchases, anonymous_purchases, member_revenue_cents, anonymous_revenue_cents,
/// refunded_cents, enrolments, points_issued, points_redeemed, points_expired]`, the
/// redemptions by reward and their cost (the demo program's: 100 and 150 points, 80 and 120
/// cents).
fn day_totals(n: [u64; 9], rewards: &[(&str, u64)], reward_cost_cents: u64) -> DayTotals {
    let [member_purchases, anonymous_purchases, member_revenue_cents, anonymous_revenue_cents, refunded_cents, enrolments, points_issued, points_redeemed, points_expired] =
        n;
    let rewards: BTreeMap<RewardId, u64> = rewards
        .iter()
        .map(|(r, n)| (RewardId::parse(r).unwrap(), *n))
        .collect();
    DayTotals {
        member_purchases,
        anonymous_purchases,
        member_revenue_cents,
        anonymous_revenue_cents,
        refunded_cents,
        enrolments,
        points_issued,
        points_redeemed,
        points_expired,
        redemptions: rewards.values().sum(),
        reward_cost_cents,
        rewards,
    }
}

/// The daily totals of the examples: (store, day of the range, totals, active members of the
/// store that day).
fn example_cells() -> Vec<((&'static str, &'static str), u32, DayTotals, u64)> {
    vec![
        (
            LYON,
            0,
            day_totals([3, 2, 4200, 2100, 0, 1, 92, 0, 0], &[], 0),
            3,
        ),
        (
            LYON,
            1,
            day_totals(
                [2, 1, 3100, 900, 500, 0, 31, 100, 0],
                &[("free-coffee", 1)],
                80,
            ),
            2,
        ),
        (
            LYON,
            2,
            day_totals([4, 3, 5600, 3300, 0, 2, 156, 0, 20], &[], 0),
            3,
        ),
        (
            PARIS,
            0,
            day_totals([1, 4, 1500, 4000, 0, 0, 15, 0, 0], &[], 0),
            1,
        ),
        (
            PARIS,
            1,
            day_totals([0, 2, 0, 1800, 0, 0, 0, 0, 0], &[], 0),
            0,
        ),
        (
            PARIS,
            2,
            day_totals(
                [2, 1, 2600, 1200, 0, 1, 76, 250, 0],
                &[("free-coffee", 1), ("free-pastry", 1)],
                200,
            ),
            2,
        ),
    ]
}

/// The KPIs of the examples' program (lifespan 3 years, a fee of 49.00 a month).
fn example_kpis(t: &DayTotals, visits: VisitCounts, previous_active: u64) -> Kpis {
    Kpis::of(&KpiInput {
        totals: t,
        visits,
        previous_active,
        days: EXAMPLE_DAYS,
        expected_lifespan_years: 3,
        monthly_fee_cents: Some(4900),
    })
}

fn visits(active: u64, repeat: u64, new: u64) -> VisitCounts {
    VisitCounts {
        active,
        repeat,
        new,
    }
}

/// The dashboard of the examples: franchise-wide with the previous period, or of one store.
fn example_dashboard(store: Option<(&str, &str)>, compare_previous: bool) -> Dashboard {
    let from = Day::parse_iso(EXAMPLE_FROM).unwrap();
    let day = |i: u32| Day(from.0 + i);
    let cells: Vec<_> = example_cells()
        .into_iter()
        .filter(|(s, ..)| store.is_none_or(|x| x == *s))
        .collect();
    let sum = |keep: &dyn Fn(&(&str, &str), u32) -> bool| {
        let mut t = DayTotals::default();
        for (s, d, x, _) in &cells {
            if keep(s, *d) {
                t.add(x);
            }
        }
        t
    };
    // Distinct members: franchise-wide one member shopped at both stores on day 2.
    let (range_visits, previous_active, daily_active) = match store {
        None => (visits(8, 3, 3), 7, [4, 2, 5]),
        Some(_) => {
            let daily: Vec<u64> = cells.iter().map(|c| c.3).collect();
            (visits(6, 2, 2), 5, [daily[0], daily[1], daily[2]])
        }
    };
    let series = (0..EXAMPLE_DAYS)
        .map(|i| {
            let t = sum(&|_, d| d == i);
            SeriesDay {
                day: day(i).iso(),
                member_purchases: t.member_purchases,
                anonymous_purchases: t.anonymous_purchases,
                member_revenue_cents: t.member_revenue_cents,
                anonymous_revenue_cents: t.anonymous_revenue_cents,
                refunded_cents: t.refunded_cents,
                enrolments: t.enrolments,
                points_issued: t.points_issued,
                points_redeemed: t.points_redeemed,
                active_members: daily_active[i as usize],
            }
        })
        .collect();
    let stores = [(PARIS, visits(3, 0, 1)), (LYON, visits(6, 2, 2))]
        .into_iter()
        .filter(|(s, _)| store.is_none_or(|x| x == *s))
        .map(|(s, v)| {
            let t = sum(&|x, _| *x == s);
            StoreRow {
                store_id: StoreId::parse(s.0).unwrap(),
                name: s.1.to_owned(),
                member_purchases: t.member_purchases,
                anonymous_purchases: t.anonymous_purchases,
                member_revenue_cents: t.member_revenue_cents,
                anonymous_revenue_cents: t.anonymous_revenue_cents,
                refunded_cents: t.refunded_cents,
                enrolments: t.enrolments,
                points_issued: t.points_issued,
                points_redeemed: t.points_redeemed,
                active_members: v.active,
                repeat_members: v.repeat,
                repeat_purchase_rate_pct: (v.active > 0)
                    .then(|| round2(v.repeat as f64 * 100.0 / v.active as f64)),
            }
        })
        .collect();
    let totals = sum(&|_, _| true);
    let mut top_rewards: Vec<RewardRow> = totals
        .rewards
        .iter()
        .map(|(r, n)| RewardRow {
            reward_id: r.clone(),
            redemptions: *n,
        })
        .collect();
    top_rewards.sort_by(|a, b| {
        b.redemptions
            .cmp(&a.redemptions)
            .then(a.reward_id.cmp(&b.reward_id))
    });
    let previous = compare_previous.then(|| Period {
        from: Day(from.0 - EXAMPLE_DAYS).iso(),
        to: Day(from.0 - 1).iso(),
        kpis: example_kpis(
            &day_totals(
                [10, 9, 13000, 8100, 0, 2, 170, 100, 0],
                &[("free-coffee", 1)],
                80,
            ),
            visits(7, 2, 1),
            6,
        ),
    });
    let tier = |name: &str, members| TierRow {
        name: name.to_owned(),
        members,
    };
    Dashboard {
        franchise_id: FranchiseId::parse("f_6df97957f5054860bf75").unwrap(),
        from: from.iso(),
        to: day(EXAMPLE_DAYS - 1).iso(),
        store: store.map(|s| StoreId::parse(s.0).unwrap()),
        time_zone: "Europe/Paris".to_owned(),
        kpis: example_kpis(&totals, range_visits, previous_active),
        previous,
        series,
        stores,
        tiers: vec![tier("Bronze", 131), tier("Silver", 22), tier("Gold", 5)],
        top_rewards,
        segments: Vec::new(),
        campaigns: Vec::new(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

/// The `type` of a property of a schema (following `$ref`s), as a list.
fn property_types(d: &Value, schema: &str, property: &str) -> Vec<String> {
    let s = &d["components"]["schemas"][schema]["properties"][property];
    let s = deref(d, s);
    match &s["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(a) => a.iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
        _ => s["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}.{property}: no type"))
            .iter()
            .flat_map(|x| {
                let x = deref(d, x);
                match &x["type"] {
                    Value::String(t) => vec![t.clone()],
                    Value::Array(a) => a.iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
                    _ => vec![],
                }
            })
            .collect(),
    }
}

/// Each field of `v` has the JSON type its schema documents: an integer is an integer (not a
/// number), a float a number, and null is allowed exactly for the fields that may be null
/// (`nullable`: those that `v` shows as null, plus `also_null`).
fn assert_types(d: &Value, schema: &str, v: &Value, also_null: &[&str]) {
    for (k, x) in v.as_object().unwrap() {
        let types = property_types(d, schema, k);
        let want = match x {
            Value::Null => None,
            Value::Number(n) if n.is_f64() => Some("number"),
            Value::Number(_) => Some("integer"),
            Value::String(_) => Some("string"),
            Value::Array(_) => Some("array"),
            Value::Object(_) => Some("object"),
            Value::Bool(_) => Some("boolean"),
        };
        if let Some(t) = want {
            assert!(
                types.iter().any(|x| x == t),
                "{schema}.{k}: {t} not in {types:?}"
            );
        }
        let nullable = x.is_null() || also_null.contains(&k.as_str());
        assert_eq!(
            types.iter().any(|t| t == "null"),
            nullable,
            "{schema}.{k}: null allowed iff the code may emit null ({types:?})"
        );
    }
}

/// The header of the CSV, read from `dashboard_csv` (a string literal continued over lines).
fn csv_header() -> String {
    const SRC: &str = include_str!("../../core/src/dashboard.rs");
    let start = SRC.find("\"day,store_id,").expect("dashboard_csv's header");
    let (lit, _) = string_literal(SRC, start);
    let mut out = String::new();
    let mut rest = lit.as_str();
    while let Some(i) = rest.find("\\\n") {
        out.push_str(&rest[..i]);
        rest = rest[i + 2..].trim_start();
    }
    out.push_str(rest);
    out.strip_suffix("\\n")
        .expect("the header ends with \\n")
        .to_owned()
}

#[test]
fn dashboard_matches_the_core_type() {
    let d = doc();
    let full = serde_json::to_value(example_dashboard(None, true)).unwrap();
    let one_store = serde_json::to_value(example_dashboard(Some(LYON), false)).unwrap();
    // `previous` only with compare=previous; every other field always.
    let dashboard = serde_json::json!({ "$ref": "#/components/schemas/Dashboard" });
    // `segments` only when the program has them (README "Segments").
    let mut with_segments = example_dashboard(None, true);
    with_segments.segments = vec![loyalty_core::dashboard::SegmentRow {
        name: "at_risk".into(),
        members: 3,
        members_at_start: 1,
        members_at_end: 2,
    }];
    // `campaigns` only when the program has them (README "Campaigns").
    with_segments.campaigns = vec![example_campaign_result()];
    let with_segments = serde_json::to_value(with_segments).unwrap();
    assert_exact_shape(&d, "DashboardSegmentRow", &with_segments["segments"][0]);
    assert_exact_shape(&d, "CampaignResult", &with_segments["campaigns"][0]);
    assert_eq!(properties(&d, &dashboard), keys(&with_segments));
    assert_eq!(required(&d, &dashboard), keys(&one_store));
    let only_compared: Vec<String> = keys(&full).difference(&keys(&one_store)).cloned().collect();
    assert_eq!(only_compared, ["previous"]);
    assert_exact_shape(&d, "DashboardKpis", &full["kpis"]);
    assert_exact_shape(&d, "DashboardPeriod", &full["previous"]);
    assert_exact_shape(&d, "DashboardKpis", &full["previous"]["kpis"]);
    assert_exact_shape(&d, "DashboardSeriesDay", &full["series"][0]);
    assert_exact_shape(&d, "DashboardStoreRow", &full["stores"][0]);
    assert_exact_shape(&d, "DashboardTierRow", &full["tiers"][0]);
    assert_exact_shape(&d, "DashboardRewardRow", &full["top_rewards"][0]);
    // Types and nullability: a period without data has every ratio null.
    let zero = DayTotals::default();
    let empty = Kpis::of(&KpiInput {
        totals: &zero,
        visits: VisitCounts::default(),
        previous_active: 0,
        days: 1,
        expected_lifespan_years: 3,
        monthly_fee_cents: None,
    });
    let empty = serde_json::to_value(empty).unwrap();
    assert_types(&d, "DashboardKpis", &empty, &[]);
    let nulls: BTreeSet<&String> = empty
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k)
        .collect();
    let kpi_nulls: Vec<&str> = nulls.iter().map(|k| k.as_str()).collect();
    assert_types(&d, "DashboardKpis", &full["kpis"], &kpi_nulls);
    assert!(
        full["kpis"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| !v.is_null()),
        "the example shows every KPI: {}",
        pretty(&full["kpis"])
    );
    assert_types(&d, "Dashboard", &full, &[]);
    assert_types(&d, "Dashboard", &one_store, &["store"]);
    assert_types(&d, "DashboardPeriod", &full["previous"], &[]);
    assert_types(&d, "DashboardSeriesDay", &full["series"][0], &[]);
    assert_types(
        &d,
        "DashboardStoreRow",
        &full["stores"][0],
        &["repeat_purchase_rate_pct"],
    );
    assert_types(&d, "DashboardTierRow", &full["tiers"][0], &[]);
    assert_types(&d, "DashboardRewardRow", &full["top_rewards"][0], &[]);
    // The examples are the code's output for the same figures.
    assert_eq!(
        schema_example(&d, "Dashboard"),
        full,
        "the Dashboard example should be {}",
        pretty(&full)
    );
    let op = &d["paths"]["/v1/franchises/{fid}/dashboard"]["get"];
    let examples = &op["responses"]["200"]["content"]["application/json"]["examples"];
    assert_eq!(examples["franchise"]["value"], full, "{}", pretty(&full));
    assert_eq!(
        examples["store"]["value"],
        one_store,
        "{}",
        pretty(&one_store)
    );
    let max = loyalty_domain::dashboard::MAX_RANGE_DAYS;
    assert!(
        op["description"]
            .as_str()
            .unwrap()
            .contains(&format!("at most {max} days")),
        "the description gives the longest range"
    );
    // Every KPI has a description.
    for k in keys(&full["kpis"]) {
        let p = &d["components"]["schemas"]["DashboardKpis"]["properties"][&k];
        assert!(
            p["description"].is_string(),
            "DashboardKpis.{k}: no description"
        );
    }

    // The CSV: the header of `dashboard_csv`, then a row per day per store (by id).
    let header = csv_header();
    let columns: Vec<&str> = header.split(',').collect();
    let op = &d["paths"]["/v1/franchises/{fid}/dashboard.csv"]["get"];
    let csv = &op["responses"]["200"]["content"]["text/csv"];
    let example = csv["examples"]["franchise"]["value"].as_str().unwrap();
    let mut want = format!("{header}\n");
    let from = Day::parse_iso(EXAMPLE_FROM).unwrap();
    for day in 0..EXAMPLE_DAYS {
        for store in [PARIS, LYON] {
            let (_, _, t, active) = example_cells()
                .into_iter()
                .find(|(s, d, ..)| *s == store && *d == day)
                .unwrap();
            let mut row = BTreeMap::new();
            let v = serde_json::to_value(&t).unwrap();
            for c in &columns {
                if let Some(n) = v.get(*c) {
                    row.insert(*c, n.to_string());
                }
            }
            row.insert("day", Day(from.0 + day).iso());
            row.insert("store_id", store.0.to_owned());
            row.insert("store_name", store.1.to_owned());
            row.insert("active_members", active.to_string());
            let fields: Vec<String> = columns
                .iter()
                .map(|c| row.get(c).unwrap_or_else(|| panic!("column {c}")).clone())
                .collect();
            want.push_str(&fields.join(","));
            want.push('\n');
        }
    }
    assert_eq!(example, want, "the CSV example should be:\n{want}");
    assert_eq!(csv["schema"]["type"], "string");
    let headers = &op["responses"]["200"]["headers"];
    assert!(headers["Content-Disposition"]["schema"]["pattern"].is_string());
    // Both forms take the same query.
    let names = |op: &Value| -> Vec<String> {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| deref(&d, p)["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let json_op = &d["paths"]["/v1/franchises/{fid}/dashboard"]["get"];
    assert_eq!(names(json_op), ["from", "to", "store", "compare"]);
    assert_eq!(names(op), ["from", "to", "store"]);
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
    let mut codes = 0;
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
        // A redemption's `code` only when it asked for one (README "Redemption codes").
        let mut documented = keys(&back);
        if t == "redemption" {
            if let Some(code) = back.get("code") {
                assert_exact_shape(&d, "IssuedCode", code);
                codes += 1;
            }
            documented.insert("code".to_owned());
        }
        let mut emitted = keys(&back);
        emitted.remove("code");
        assert_eq!(properties(&d, &schema), documented, "outcome {t}");
        assert_eq!(required(&d, &schema), emitted, "outcome {t}");
        types.insert(t);
    }
    for t in [
        "purchase",
        "anonymous_sale",
        "refund",
        "redemption",
        "redemption_cancelled",
        "code_consumed",
    ] {
        assert!(types.contains(t), "no example of a {t} outcome");
    }
    assert!(codes > 0, "no example of a redemption with a code");
}

fn every_error() -> Vec<ApiError> {
    let reward = RewardId::parse("free-coffee").unwrap();
    let event = EventId::parse("pos1-0001").unwrap();
    vec![
        ApiError::Unauthorized,
        ApiError::AmbiguousAuthorization(2),
        ApiError::Forbidden("a store key cannot do this"),
        ApiError::NotFound("no such franchise".into()),
        ApiError::MethodNotAllowed {
            method: "TRACE".into(),
            path: "/v1/purchases".into(),
            allow: "POST".into(),
        },
        ApiError::UriTooLong {
            length: 9000,
            limit: loyalty_gateway::routing::MAX_URI_BYTES,
        },
        ApiError::HeadersTooLarge("too many".into()),
        ApiError::MalformedJson("EOF".into()),
        ApiError::Invalid("bad".into()),
        ApiError::InvalidQuery("from is after to".into()),
        ApiError::PayloadTooLarge { limit: 16384 },
        ApiError::UnsupportedMediaType,
        ApiError::IdempotencyConflict("pos1-0001".into()),
        ApiError::ProgramConflict("another update took version 3".into()),
        ApiError::KeyConflict("key k_9a8b7c6d5e4f3a2b1c0d is revoked".into()),
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
        ApiError::Rejected(Rejection::LimitExceeded {
            counter: "points".into(),
            limit: loyalty_domain::MAX_POINTS_BALANCE,
        }),
        ApiError::Rejected(Rejection::MemberErased),
        ApiError::Rejected(Rejection::RewardNotValid {
            reward_id: RewardId::parse("free-pastry").unwrap(),
            valid_from: Some("2026-12-01".into()),
            valid_to: None,
        }),
        ApiError::Rejected(Rejection::RedemptionLimitReached {
            reward_id: RewardId::parse("free-pastry").unwrap(),
            limit_per_member: 2,
        }),
        ApiError::Rejected(Rejection::UnknownRedemption {
            redemption_event_id: EventId::parse("pos1-0009").unwrap(),
        }),
        ApiError::Rejected(Rejection::RedemptionAlreadyCancelled {
            redemption_event_id: EventId::parse("pos1-0003").unwrap(),
            cancelled_by: EventId::parse("pos1-0004").unwrap(),
        }),
        ApiError::Rejected(Rejection::CancellationWindowClosed { cancel_minutes: 15 }),
        ApiError::Rejected(Rejection::EmailRequired),
        ApiError::Rejected(Rejection::RedemptionCodesNotOffered),
        ApiError::Rejected(Rejection::UnknownCode),
        ApiError::Rejected(Rejection::CodeAlreadyUsed {
            used_at: loyalty_domain::Timestamp(1_764_603_000_000),
            store_id: StoreId::parse("s_7c1e2a9b4d6f8e0a1b2c").unwrap(),
        }),
        ApiError::Rejected(Rejection::CodeExpired {
            expired_at: loyalty_domain::Timestamp(1_767_225_600_000),
        }),
        ApiError::Rejected(Rejection::CodeVoided {
            cancelled_by: EventId::parse("pos1-0006").unwrap(),
        }),
        ApiError::AnonymousRefund,
        ApiError::Unavailable("down".into()),
        ApiError::Internal("bug".into()),
    ]
}

/// Every (status, code) of the problem examples of the operations, and of the shared responses
/// (`MethodNotAllowed` is answered for the methods an operation does not have).
fn documented_problems(d: &Value) -> BTreeMap<String, BTreeSet<u16>> {
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let shared = d["components"]["responses"].as_object().unwrap();
    let shared = shared.values().filter_map(|r| {
        let status = r["content"]["application/problem+json"]["examples"]
            .as_object()?
            .values()
            .next()?["value"]["status"]
            .as_u64()?;
        Some((status.to_string(), r))
    });
    let responses = operations(d).into_iter().flat_map(|(_, _, op)| {
        op["responses"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(s, r)| (s.clone(), r))
    });
    for (status, r) in responses.chain(shared) {
        let r = deref(d, r);
        let Some(examples) = r["content"]["application/problem+json"]["examples"].as_object()
        else {
            continue;
        };
        for ex in examples.values() {
            let v = &ex["value"];
            assert_eq!(
                v["status"].as_u64().unwrap().to_string(),
                status,
                "example {v} under {status}"
            );
            out.entry(v["code"].as_str().unwrap().to_owned())
                .or_default()
                .insert(status.parse().unwrap());
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
    // Refunds give something back; balances and totals stay within their limits (int64).
    assert_eq!(s["RefundAmountCents"]["maximum"].as_u64(), Some(Cents::MAX));
    assert_eq!(s["RefundAmountCents"]["minimum"].as_u64(), Some(1));
    // Optional since a refund without it is a void (all that is left).
    assert_eq!(
        s["RefundRequest"]["properties"]["amount_cents"]["oneOf"][0]["$ref"],
        "#/components/schemas/RefundAmountCents"
    );
    assert_eq!(
        s["RefundRequest"]["properties"]["amount_cents"]["oneOf"][1]["type"],
        "null"
    );
    let max_points = loyalty_domain::MAX_POINTS_BALANCE;
    assert_eq!(s["Points"]["maximum"].as_u64(), Some(max_points));
    assert!(i64::try_from(max_points).is_ok());
    let entry = &s["LedgerEntry"]["properties"]["points"];
    assert_eq!(entry["maximum"].as_u64(), Some(max_points));
    assert_eq!(entry["minimum"].as_i64(), Some(-(max_points as i64)));
    assert_eq!(
        s["MemberStatus"]["properties"]["spend_cents"]["maximum"].as_u64(),
        Some(loyalty_domain::MAX_MEMBER_CENTS)
    );
    // The horizon of `occurred_at`.
    assert_eq!(
        s["OccurredAt"]["x-max-age-days"].as_i64(),
        Some(loyalty_core::input::MAX_EVENT_AGE_DAYS)
    );
    assert_eq!(
        s["OccurredAt"]["x-max-future-seconds"].as_i64(),
        Some(loyalty_core::input::MAX_CLOCK_SKEW_MS / 1000)
    );
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
                .route("/after", web::post().to(b::after))
                .service(endpoint("/e/{id}").get(b::one).put(b::replace))
                .service(endpoint("/f").post(b::f)),
        )
        .service(endpoint("/top2").get(b::top2))
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
        ("get", "/v2/e/{id}"),
        ("put", "/v2/e/{id}"),
        ("post", "/v2/f"),
        ("get", "/top2"),
        ("put", "/last"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

/// The ranges of a regex character class body such as `\u0000-\u001F\u007F` (only `\uXXXX`
/// escapes, single or as a range), as inclusive code point ranges.
fn class_ranges(class: &str) -> Vec<(u32, u32)> {
    let cps: Vec<(u32, bool)> = {
        let mut out = Vec::new();
        let mut rest = class;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('-') {
                out.push((0, true));
                rest = r;
                continue;
            }
            let r = rest.strip_prefix("\\u").expect("a \\uXXXX escape");
            out.push((u32::from_str_radix(&r[..4], 16).unwrap(), false));
            rest = &r[4..];
        }
        out
    };
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < cps.len() {
        if cps.get(i + 1).is_some_and(|c| c.1) {
            ranges.push((cps[i].0, cps[i + 2].0));
            i += 3;
        } else {
            ranges.push((cps[i].0, cps[i].0));
            i += 1;
        }
    }
    ranges
}

fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    ranges.iter().any(|&(a, b)| (a..=b).contains(&(c as u32)))
}

/// The document refuses what the server refuses in names: the patterns' classes are exactly
/// the characters the server's checks see. `^[^C]*$` for a member's name (C: the control
/// characters, `char::is_control`), `^[^C]*[^CW][^C]*$` for the names of franchises, stores,
/// tiers and rewards (W: what `str::trim` removes besides, `char::is_whitespace`): no control
/// character anywhere, not blank, at most 100 characters as sent.
#[test]
fn name_patterns_are_the_servers_checks() {
    let d = doc();
    let s = &d["components"]["schemas"];
    let member = &s["EnrolRequest"]["properties"]["name"];
    let member_pattern = member["pattern"].as_str().unwrap();
    let control = member_pattern
        .strip_prefix("^[^")
        .and_then(|p| p.strip_suffix("]*$"))
        .expect("^[^C]*$");
    let control_ranges = class_ranges(control);
    assert_eq!(member["maxLength"].as_u64(), Some(100));
    let mut visible = BTreeSet::new();
    for (schema, field) in [
        ("CreateFranchiseRequest", "name"),
        ("CreateStoreRequest", "name"),
        ("Tier", "name"),
        ("RewardSpec", "name"),
        ("CampaignSpec", "name"),
    ] {
        let p = &s[schema]["properties"][field];
        assert_eq!(p["maxLength"].as_u64(), Some(100), "{schema}.{field}");
        assert_eq!(p["minLength"].as_u64(), Some(1), "{schema}.{field}");
        let pattern = p["pattern"].as_str().unwrap();
        let class = pattern
            .strip_prefix(&format!("^[^{control}]*[^{control}"))
            .and_then(|p| p.strip_suffix(&format!("][^{control}]*$")))
            .unwrap_or_else(|| panic!("{schema}.{field}: ^[^C]*[^CW][^C]*$, got {pattern}"));
        visible.insert(class.to_owned());
    }
    assert_eq!(visible.len(), 1, "one pattern for every name: {visible:?}");
    let space_ranges = class_ranges(visible.first().unwrap());
    for c in (0..=0x10FFFF).filter_map(char::from_u32) {
        assert_eq!(in_ranges(c, &control_ranges), c.is_control(), "{c:?}");
        if !c.is_control() {
            assert_eq!(in_ranges(c, &space_ranges), c.is_whitespace(), "{c:?}");
        }
    }
}

/// The other bounds that the property-based API test (scripts/schemathesis.py) found missing
/// from the document: each is what the server checks.
#[test]
fn the_schema_is_as_strict_as_the_server() {
    let d = doc();
    let s = &d["components"]["schemas"];
    // A ledger cursor is an int64, like the `next_before` it comes from.
    let ledger = &d["paths"]["/v1/members/{member_id}/ledger"]["get"];
    let before = ledger["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "before")
        .unwrap();
    assert_eq!(before["schema"]["maximum"].as_i64(), Some(i64::MAX));
    assert_eq!(
        s["LedgerPage"]["properties"]["next_before"]["maximum"].as_i64(),
        Some(i64::MAX)
    );
    // A purchase names its member by at most one of three fields: each branch of the anyOf
    // lets one of them be a string.
    let refs = ["member_id", "phone", "qr"];
    let branches = s["PurchaseRequest"]["anyOf"].as_array().unwrap();
    assert_eq!(branches.len(), refs.len());
    for (b, free) in branches.iter().zip(refs) {
        let nulls: BTreeSet<&str> = b["properties"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["type"] == "null")
            .map(|(k, _)| k.as_str())
            .collect();
        let others: BTreeSet<&str> = refs.iter().copied().filter(|r| *r != free).collect();
        assert_eq!(nulls, others, "{b}");
    }
    // A lookup: exactly one of phone or qr, nothing else (the server's LookupQuery denies
    // unknown fields).
    let lookup = &d["paths"]["/v1/members/lookup"]["get"]["parameters"];
    assert_eq!(lookup.as_array().map(Vec::len), Some(1));
    let by = &lookup[0];
    assert_eq!(
        (&by["in"], &by["style"], &by["explode"]),
        (
            &Value::from("query"),
            &Value::from("form"),
            &Value::from(true)
        )
    );
    let schema = &by["schema"];
    assert_eq!(
        keys(&schema["properties"]),
        keys(&serde_json::json!({"phone": 0, "qr": 0}))
    );
    assert_eq!(
        (&schema["minProperties"], &schema["maxProperties"]),
        (&Value::from(1), &Value::from(1))
    );
    assert_eq!(schema["additionalProperties"], false);
    // Dashboard dates: from 1970 (Day counts from 1970-01-01) to 9999.
    for p in ["DashboardFrom", "DashboardTo"] {
        assert_eq!(
            d["components"]["parameters"][p]["schema"]["pattern"],
            "^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}$"
        );
    }
    for (day, ok) in [
        ("1969-12-31", false),
        ("1970-01-01", true),
        ("9999-12-31", true),
    ] {
        assert_eq!(Day::parse_iso(day).is_some(), ok, "{day}");
    }
    // The first tier is at threshold 0, and a reward's cost_cents may be null (as 0).
    let first = &s["ProgramSpec"]["properties"]["tiers"]["prefixItems"][0]["allOf"];
    assert_eq!(first[0]["$ref"], "#/components/schemas/Tier");
    assert_eq!(first[1]["properties"]["threshold"]["const"], 0);
    let mut program = serde_json::to_value(Program::demo()).unwrap();
    program["rewards"][0]["cost_cents"] = Value::Null;
    let p: Program = serde_json::from_value(program).unwrap();
    assert_eq!(p.rewards[0].cost_cents, 0);
    program = serde_json::to_value(Program::demo()).unwrap();
    program["tiers"][0]["threshold"] = Value::from(1);
    assert!(serde_json::from_value::<Program>(program).is_err());
}

/// The outcomes of refunds (README "Refunds and voids"): a refund with what it reversed, the
/// purchase record with what it gave, and a refund held for a purchase not seen yet, have
/// exactly the documented shapes; the examples of `/v1/refunds` are such outcomes.
#[test]
fn refund_outcomes_match_the_domain_types() {
    let d = doc();
    let record = loyalty_domain::PurchaseRecord {
        amount_cents: Cents::new(1200).unwrap(),
        points_earned: 12,
        day: Day(20_782),
        refunded_cents: 1200,
        reversed_points: 12,
        visit: true,
        stamp: true,
        voucher: Some(RewardId::parse("free-coffee").unwrap()),
        card_size: 10,
        reversed_in_full: true,
        held_refunded_cents: 0,
    };
    let refund = serde_json::to_value(Outcome::Refund {
        purchase_event_id: EventId::parse("pos2-0001").unwrap(),
        amount_cents: Cents::new(1200).unwrap(),
        points_reversed: 12,
        points_forgiven: 0,
        purchase: record.clone(),
        visit_reversed: true,
        stamp_reversed: true,
        voucher_reversed: Some(RewardId::parse("free-coffee").unwrap()),
        voucher_kept: None,
    })
    .unwrap();
    assert_exact_shape(&d, "RefundOutcome", &refund);
    assert_exact_shape(&d, "PurchaseRecord", &refund["purchase"]);
    let held = serde_json::to_value(Outcome::Held {
        purchase_event_id: EventId::parse("till3-0004").unwrap(),
        amount_cents: None,
        lapses_at: loyalty_domain::Timestamp(1_798_799_999_000),
    })
    .unwrap();
    assert_exact_shape(&d, "HeldOutcome", &held);
    let mapping = &d["components"]["schemas"]["Outcome"]["discriminator"]["mapping"];
    assert_eq!(mapping["held"], "#/components/schemas/HeldOutcome");
    let examples = &d["paths"]["/v1/refunds"]["post"]["responses"]["200"]["content"]
        ["application/json"]["examples"];
    for name in ["applied", "held"] {
        let outcome = &examples[name]["value"]["outcome"];
        let typed: Outcome = serde_json::from_value(outcome.clone())
            .unwrap_or_else(|e| panic!("example {name} is an outcome: {e}"));
        assert_eq!(&serde_json::to_value(&typed).unwrap(), outcome, "{name}");
    }
}

/// The line items and item bonuses are documented with the bounds the domain checks, and a
/// program with item bonuses is answered in the documented exact shape.
#[test]
fn item_bounds_and_shapes_are_the_codes() {
    use loyalty_domain::items::{
        MAX_BONUS_PRODUCTS, MAX_ITEMS, MAX_ITEM_BONUSES, MAX_ITEM_QUANTITY,
    };
    let d = doc();
    let s = &d["components"]["schemas"];
    let items = &s["PurchaseRequest"]["properties"]["items"]["oneOf"][0];
    assert_eq!(items["maxItems"].as_u64(), Some(MAX_ITEMS as u64));
    assert_eq!(items["items"]["$ref"], "#/components/schemas/PurchaseItem");
    let line = &s["PurchaseItem"]["properties"];
    assert_eq!(
        line["quantity"]["maximum"].as_i64(),
        Some(MAX_ITEM_QUANTITY)
    );
    assert_eq!(line["quantity"]["minimum"].as_i64(), Some(1));
    let token = format!("^[A-Za-z0-9_.:-]{{1,{}}}$", loyalty_domain::Sku::MAX_LEN);
    assert_eq!(line["sku"]["pattern"].as_str(), Some(token.as_str()));
    assert_eq!(line["category"]["pattern"].as_str(), Some(token.as_str()));
    let spec = &s["ProgramSpec"]["properties"]["item_bonuses"];
    assert_eq!(spec["maxItems"].as_u64(), Some(MAX_ITEM_BONUSES as u64));
    for list in ["skus", "categories"] {
        let l = &s["ItemBonusSpec"]["properties"][list]["oneOf"][0];
        assert_eq!(l["maxItems"].as_u64(), Some(MAX_BONUS_PRODUCTS as u64));
    }
    // What the server answers for each documented example of a bonus spec.
    let p: Program = serde_json::from_value(serde_json::json!({
        "currency": "EUR", "points_per_unit": 1,
        "tier_qualification": {"metric": "visits", "window_days": 30},
        "tiers": [{"name": "Only", "threshold": 0, "multiplier_pct": 100}],
        "item_bonuses": s["ItemBonusSpec"]["examples"].clone(),
    }))
    .expect("the documented item bonus is valid");
    let answered = serde_json::to_value(&p).unwrap();
    assert_exact_shape(&d, "ItemBonus", &answered["item_bonuses"][0]);
    // A line as documented decodes.
    let example = s["PurchaseItem"]["examples"][0].clone();
    let spec: loyalty_domain::PurchaseItemSpec = serde_json::from_value(example).unwrap();
    let parsed =
        loyalty_domain::items::parse_items(&[spec], loyalty_domain::Cents::new(1200).unwrap());
    assert!(parsed.is_ok(), "{parsed:?}");
}

/// A program with campaigns covering every trigger, offer, audience, message and cap, as the
/// server answers it.
fn campaigned_demo() -> Value {
    let mut p = serde_json::to_value(Program::demo()).unwrap();
    p["segments"] = serde_json::json!({});
    p["campaigns"] = serde_json::json!([
        { "id": "welcome", "name": " Welcome ", "trigger": { "type": "enrolled" },
          "offer": { "type": "bonus_points", "points": 25 },
          "messages": { "sms": "Hi {first_name}: {offer}" } },
        { "id": "win-back", "name": "Win back", "trigger": { "type": "segment_entered", "segment": "at_risk" },
          "audience": { "segments": ["at_risk"], "stores": ["s_1afd3f08581247de896f"] },
          "offer": { "type": "voucher", "reward_id": "free-coffee" },
          "messages": { "sms": "We miss you", "email": { "subject": "{franchise}", "body": "Come back {opt_out_url}" } },
          "frequency_cap": { "max": 2, "days": 90 }, "redeem_within_days": 14,
          "valid_from": "2026-01-01", "valid_to": "2026-12-31" },
        { "id": "bday", "name": "Birthday", "trigger": { "type": "birthday" },
          "offer": { "type": "multiplier", "multiplier_pct": 200, "days": 7 } },
        { "id": "silver", "name": "Silver", "trigger": { "type": "tier_reached", "tier": "Silver" },
          "offer": { "type": "none" }, "messages": { "email": { "subject": "s", "body": "b" } } },
        { "id": "p500", "name": "500 points", "trigger": { "type": "points_reached", "points": 500 },
          "offer": { "type": "none" }, "audience": {} },
        { "id": "xmas", "name": "Christmas", "trigger": { "type": "date", "on": "2026-12-24" },
          "offer": { "type": "none" }, "messages": null, "frequency_cap": null }
    ]);
    let p: Program = serde_json::from_value(p).expect("a program with campaigns");
    serde_json::to_value(p).unwrap()
}

/// The `oneOf` branch of `schema` whose `type` is `t`.
fn branch<'a>(d: &'a Value, schema: &str, t: &str) -> &'a Value {
    d["components"]["schemas"][schema]["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{schema} is a oneOf"))
        .iter()
        .find(|b| b["properties"]["type"]["const"] == t)
        .unwrap_or_else(|| panic!("{schema} has no branch {t}"))
}

fn branch_types(d: &Value, schema: &str) -> BTreeSet<String> {
    d["components"]["schemas"][schema]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["properties"]["type"]["const"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A tagged value the server emits has exactly its branch's properties, all required.
fn assert_exact_branch(d: &Value, schema: &str, v: &Value) {
    let b = branch(d, schema, v["type"].as_str().unwrap());
    assert_eq!(keys(&b["properties"]), keys(v), "{schema}: {v}");
    assert_eq!(
        required(d, b),
        keys(v),
        "{schema}: every field of {v} is required"
    );
    assert_eq!(b["additionalProperties"], false, "{schema}: {v}");
}

/// Campaigns (README "Campaigns") have the documented shapes: the domain's serialized
/// campaigns against the response schemas, every trigger and offer type documented in both
/// the request and the response, the request's fields those of the response.
#[test]
fn campaigns_match_the_domain_type() {
    let d = doc();
    let p = campaigned_demo();
    let program = serde_json::json!({ "$ref": "#/components/schemas/Program" });
    let mut with_everything = segmented_demo();
    with_everything["campaigns"] = p["campaigns"].clone();
    with_everything["redemption_codes"] = coded_demo()["redemption_codes"].clone();
    assert_eq!(properties(&d, &program), keys(&with_everything));
    let campaigns = p["campaigns"].as_array().unwrap();
    let (mut triggers, mut offers) = (BTreeSet::new(), BTreeSet::new());
    for c in campaigns {
        assert_exact_shape(&d, "Campaign", c);
        assert_exact_shape(&d, "CampaignAudience", &c["audience"]);
        assert_exact_shape(&d, "CampaignFrequencyCap", &c["frequency_cap"]);
        assert_exact_branch(&d, "CampaignTrigger", &c["trigger"]);
        assert_exact_branch(&d, "CampaignOffer", &c["offer"]);
        let messages = serde_json::json!({ "$ref": "#/components/schemas/CampaignMessages" });
        assert!(keys(&c["messages"]).is_subset(&properties(&d, &messages)));
        triggers.insert(c["trigger"]["type"].as_str().unwrap().to_owned());
        offers.insert(c["offer"]["type"].as_str().unwrap().to_owned());
        // What HQ writes: the same fields and, per trigger, the same ones.
        let spec = serde_json::json!({ "$ref": "#/components/schemas/CampaignSpec" });
        assert_eq!(properties(&d, &spec), keys(c));
        let t = c["trigger"]["type"].as_str().unwrap();
        assert_eq!(
            keys(&branch(&d, "CampaignTriggerSpec", t)["properties"]),
            keys(&c["trigger"])
        );
    }
    assert_eq!(p["campaigns"][0]["name"], "Welcome", "names are trimmed");
    let both = &p["campaigns"][1]["messages"];
    let messages = serde_json::json!({ "$ref": "#/components/schemas/CampaignMessages" });
    assert_eq!(properties(&d, &messages), keys(both));
    assert_exact_shape(&d, "CampaignEmail", &both["email"]);
    let audience_spec = serde_json::json!({ "$ref": "#/components/schemas/CampaignAudienceSpec" });
    assert_eq!(
        properties(&d, &audience_spec),
        keys(&campaigns[0]["audience"])
    );
    for schema in ["CampaignTrigger", "CampaignTriggerSpec"] {
        assert_eq!(branch_types(&d, schema), triggers, "{schema}");
    }
    assert_eq!(branch_types(&d, "CampaignOffer"), offers);
    // The examples: the request's is valid, and answered as the response's example.
    let mut with = serde_json::to_value(Program::demo()).unwrap();
    with["campaigns"] = serde_json::json!([schema_example(&d, "CampaignSpec")]);
    let answered = serde_json::to_value(serde_json::from_value::<Program>(with).unwrap()).unwrap();
    assert_eq!(answered["campaigns"][0], schema_example(&d, "Campaign"));
    // Bounds: the domain's.
    let s = &d["components"]["schemas"];
    assert_eq!(
        s["ProgramSpec"]["properties"]["campaigns"]["maxItems"].as_u64(),
        Some(loyalty_domain::campaigns::MAX_CAMPAIGNS as u64)
    );
}

/// A template's pattern is the domain's check: only `{placeholder}`s of
/// [`loyalty_domain::campaigns::PLACEHOLDERS`], not blank (`str::trim`: `char::is_whitespace`).
#[test]
fn template_patterns_are_the_domains_placeholders() {
    let d = doc();
    let s = &d["components"]["schemas"];
    let names = loyalty_domain::campaigns::PLACEHOLDERS.join("|");
    let tok = format!("\\{{(?:{names})\\}}");
    let sms = &s["CampaignMessagesSpec"]["properties"]["sms"];
    let pattern = sms["pattern"].as_str().unwrap();
    let ws = pattern
        .strip_prefix(&format!("^(?:[^{{]|{tok})*(?:[^{{"))
        .and_then(|p| p.strip_suffix(&format!("]|{tok})(?:[^{{]|{tok})*$")))
        .unwrap_or_else(|| panic!("a template pattern, got {pattern}"));
    let ranges = class_ranges(ws);
    for c in (0..=0x10FFFF).filter_map(char::from_u32) {
        assert_eq!(in_ranges(c, &ranges), c.is_whitespace(), "{c:?}");
    }
    let email = &s["CampaignEmail"]["properties"];
    for (t, max) in [
        (sms, 480),
        (&email["subject"], 200),
        (&email["body"], 10_000),
    ] {
        assert_eq!(t["pattern"].as_str(), Some(pattern));
        assert_eq!(t["maxLength"].as_u64(), Some(max));
        assert_eq!(t["minLength"].as_u64(), Some(1));
    }
}

fn example_campaign_result() -> loyalty_core::campaigns::CampaignResult {
    loyalty_core::campaigns::CampaignResult {
        id: "welcome".into(),
        name: "Welcome bonus".into(),
        trigger: "enrolled".into(),
        channels: vec![loyalty_domain::campaigns::Channel::Sms],
        fired: 4,
        messages: 3,
        delivered: 2,
        failed: 1,
        redeemed: 1,
        revenue_cents: 1250,
        redemption_rate: 0.25,
    }
}

/// The campaign results have the documented shape, and the example is the core's form.
#[test]
fn campaign_results_match_the_core_type() {
    let d = doc();
    let r = loyalty_core::campaigns::CampaignResults {
        franchise_id: FranchiseId::parse("f_6df97957f5054860bf75").unwrap(),
        from: "2026-11-02".into(),
        to: "2026-11-04".into(),
        time_zone: "Europe/Paris".into(),
        campaigns: vec![example_campaign_result()],
    };
    let v = serde_json::to_value(&r).unwrap();
    assert_exact_shape(&d, "CampaignResults", &v);
    assert_exact_shape(&d, "CampaignResult", &v["campaigns"][0]);
    assert_eq!(schema_example(&d, "CampaignResults"), v, "{}", pretty(&v));
    // Every counter of the domain's series is one of the result's fields.
    for counter in loyalty_domain::campaigns::COUNTERS {
        assert!(keys(&v["campaigns"][0]).contains(counter), "{counter}");
    }
}
