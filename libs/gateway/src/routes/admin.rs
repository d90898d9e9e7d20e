//! Franchises, their program and their stores: set up by the platform admin and by HQ.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use dashmap::DashMap;
use loyalty_core::model::Role;
use loyalty_core::provisioning;
use loyalty_domain::{FranchiseId, Program};
use serde::Deserialize;
use serde_json::json;

use crate::json::JsonObject;
use crate::problem::ApiError;
use crate::state::Gateway;

const MAX_NAME: usize = 100;

/// A name as sent: at most [`MAX_NAME`] characters, no control character anywhere (a tab or
/// a newline included, even at an edge), not blank: what the OpenAPI document's pattern for
/// names says. Kept trimmed.
fn valid_name(field: &str, name: &str) -> Result<String, ApiError> {
    let t = name.trim();
    if t.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        Err(ApiError::Invalid(format!(
            "{field} must be 1 to {MAX_NAME} printable characters"
        )))
    } else {
        Ok(t.to_owned())
    }
}

/// A program is validated on its own, so that its errors name the program's field. The names
/// of its tiers, rewards and campaigns follow [`valid_name`] as sent (the domain checks them trimmed, and
/// keeps accepting the programs it stored before control characters were refused).
fn parse_program(v: serde_json::Value) -> Result<Program, ApiError> {
    for list in ["tiers", "rewards", "campaigns"] {
        if let Some(items) = v.get(list).and_then(|l| l.as_array()) {
            for (i, item) in items.iter().enumerate() {
                if let Some(name) = item.get("name").and_then(|n| n.as_str()) {
                    valid_name(&format!("program: {list}[{i}].name"), name)?;
                }
            }
        }
    }
    if let Some(items) = v.get("campaigns").and_then(|l| l.as_array()) {
        for (i, item) in items.iter().enumerate() {
            only_type(i, item, "trigger", "birthday")?;
            only_type(i, item, "offer", "none")?;
        }
    }
    serde_json::from_value::<Program>(v).map_err(|e| ApiError::Invalid(format!("program: {e}")))
}

/// A campaign's `field` of type `unit` (a birthday trigger, an offer of none) has no field but
/// `type`. serde's internally tagged unit variants ignore unknown fields whatever
/// `deny_unknown_fields` says, so without this a typo there would be accepted silently, unlike
/// everywhere else in the program.
fn only_type(
    i: usize,
    campaign: &serde_json::Value,
    field: &str,
    unit: &str,
) -> Result<(), ApiError> {
    let Some(obj) = campaign.get(field).and_then(|t| t.as_object()) else {
        return Ok(());
    };
    if obj.get("type").and_then(|t| t.as_str()) != Some(unit) {
        return Ok(());
    }
    match obj.keys().find(|k| *k != "type") {
        Some(k) => Err(ApiError::Invalid(format!(
            "program: campaigns[{i}].{field}: unknown field `{k}`, a {unit} {field} has only `type`"
        ))),
        None => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFranchise {
    pub name: String,
    pub program: serde_json::Value,
}

/// `POST /v1/franchises` (admin).
pub async fn create_franchise(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    body: JsonObject<CreateFranchise>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&req, &[Role::Admin]).await?;
    let body = body.into_inner();
    let name = valid_name("name", &body.name)?;
    let program = parse_program(body.program)?;
    let (f, record, key) =
        provisioning::create_franchise_keyed(gw.store.as_ref(), &name, &program).await?;
    tracing::info!(franchise = %f.id, "franchise created");
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "id": f.id,
            "name": f.name,
            "program_version": f.program_version,
            "hq_api_key": key,
            "hq_api_key_id": record.id,
        })))
}

/// The franchise named in the path, if it is the caller's (an HQ key, to change it); any
/// other is 404.
pub(crate) async fn own_franchise(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
) -> Result<std::sync::Arc<loyalty_core::model::Franchise>, ApiError> {
    franchise_of_caller(gw, req, fid, &[Role::Hq]).await
}

/// The franchise named in the path, if it is the caller's (an HQ key or a read-only one, to
/// read it); any other is 404.
pub(crate) async fn own_franchise_reading(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
) -> Result<std::sync::Arc<loyalty_core::model::Franchise>, ApiError> {
    franchise_of_caller(gw, req, fid, &[Role::Hq, Role::HqReadOnly]).await
}

async fn franchise_of_caller(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
    roles: &[Role],
) -> Result<std::sync::Arc<loyalty_core::model::Franchise>, ApiError> {
    let p = gw.authorize(req, roles).await?;
    let not_found = || ApiError::NotFound("no such franchise".into());
    let fid = FranchiseId::parse(fid).map_err(|_| not_found())?;
    if p.franchise_id.as_ref() != Some(&fid) {
        return Err(not_found());
    }
    gw.franchise(&fid).await?.ok_or_else(not_found)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceProgram {
    pub program: serde_json::Value,
}

/// One lock per franchise: this process's updates of a franchise's program run one at a time,
/// so concurrent updates through one gateway all succeed, with consecutive versions, and the
/// franchise this gateway caches is the last one written.
static PROGRAM_UPDATES: LazyLock<DashMap<FranchiseId, Arc<tokio::sync::Mutex<()>>>> =
    LazyLock::new(DashMap::new);

/// Tries of one update whose next version another gateway took meanwhile (each re-reads the
/// franchise; the other gateway's update is then visible, unless it is still being written).
const PROGRAM_UPDATE_ATTEMPTS: u64 = 3;

/// `PUT /v1/franchises/{fid}/program` (hq): a new program version for events accepted from now.
///
/// The new version is the stored one plus 1, and a program version is written once (the
/// store refuses a second write). Updates through this gateway are serialized; an update
/// that loses the race for a version to another gateway reads the franchise again and
/// retries, and if the version is still taken after [`PROGRAM_UPDATE_ATTEMPTS`] it is answered
/// 409 `program-conflict` with `Retry-After: 1`, nothing changed.
pub async fn replace_program(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    body: JsonObject<ReplaceProgram>,
) -> Result<HttpResponse, ApiError> {
    let f = own_franchise(&gw, &req, &path).await?;
    let program = parse_program(body.into_inner().program)?;
    let serial = Arc::clone(PROGRAM_UPDATES.entry(f.id.clone()).or_default().value());
    let _serial = serial.lock().await;
    let mut attempt = 0;
    let updated = loop {
        attempt += 1;
        // Read the franchise fresh: the version must follow the stored one.
        let current = gw
            .store
            .franchise(&f.id)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such franchise".into()))?;
        match provisioning::replace_program(gw.store.as_ref(), &current, &program).await {
            Ok(updated) => break updated,
            Err(loyalty_core::Error::Conflict(m)) if attempt < PROGRAM_UPDATE_ATTEMPTS => {
                tracing::info!(franchise = %f.id, attempt, conflict = %m, "program update raced another; retrying");
                tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
            }
            Err(loyalty_core::Error::Conflict(m)) => {
                tracing::warn!(franchise = %f.id, conflict = %m, "program update kept losing the race for the next version");
                return Err(ApiError::ProgramConflict(format!(
                    "program version {} of franchise {} was written by another update at the same time; nothing was changed: read the program, then send the update again",
                    current.program_version + 1,
                    f.id
                )));
            }
            Err(e) => return Err(e.into()),
        }
    };
    gw.programs.insert(
        &updated.id,
        updated.program_version,
        Arc::new(program.clone()),
    );
    let version = updated.program_version;
    gw.franchise_changed(updated);
    tracing::info!(franchise = %f.id, version, "program replaced");
    Ok(HttpResponse::Ok()
        .json(json!({ "id": f.id, "program_version": version, "program": program })))
}

/// `GET /v1/franchises/{fid}/program` (hq, hq_read_only).
pub async fn get_program(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let f = own_franchise_reading(&gw, &req, &path).await?;
    let program = gw.program(&f).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "id": f.id, "program_version": f.program_version, "program": *program })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStore {
    pub name: String,
}

/// `POST /v1/franchises/{fid}/stores` (hq).
pub async fn create_store(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    body: JsonObject<CreateStore>,
) -> Result<HttpResponse, ApiError> {
    let f = own_franchise(&gw, &req, &path).await?;
    let name = valid_name("name", &body.name)?;
    let (s, record, key) =
        provisioning::create_store_keyed(gw.store.as_ref(), &f.id, &name).await?;
    tracing::info!(franchise = %f.id, store = %s.id, "store created");
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "id": s.id, "name": s.name, "api_key": key, "api_key_id": record.id })))
}

/// `GET /v1/franchises/{fid}/stores/{sid}/pos-signing-secret` (hq): the secret that store's
/// records on the POS topic are signed with (docs/pos-topic.md). Derived from the franchise's
/// secret and the store id, so it can be fetched again at any time; a store of another
/// franchise is answered as unknown.
pub async fn pos_signing_secret(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (fid, sid) = path.into_inner();
    let f = own_franchise(&gw, &req, &fid).await?;
    let not_found = || ApiError::NotFound("no such store".into());
    let sid = loyalty_domain::StoreId::parse(&sid).map_err(|_| not_found())?;
    let secret = provisioning::pos_signing_secret(gw.store.as_ref(), &f.id, &sid)
        .await?
        .ok_or_else(not_found)?;
    tracing::info!(franchise = %f.id, store = %sid, "POS signing secret handed out");
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "store_id": sid, "scheme": "v1", "header": "loyalty-signature", "signing_secret": secret })))
}

/// `POST /v1/admin/cache/rebuild` (admin): writes every member's status from the store into the
/// hot cache (after a Redis flush or failover). Safe while traffic flows: the cache keeps the
/// newer of two versions.
pub async fn rebuild_cache(
    req: HttpRequest,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&req, &[Role::Admin]).await?;
    let started = std::time::Instant::now();
    let n = loyalty_core::rebuild::rebuild(
        gw.store.as_ref(),
        &gw.programs,
        gw.cache.as_ref(),
        loyalty_core::rebuild::DEFAULT_REBUILD_PAGE,
    )
    .await?;
    tracing::info!(statuses = n, "hot cache rebuilt");
    Ok(
        HttpResponse::Ok()
            .json(json!({ "rebuilt": n, "seconds": started.elapsed().as_secs_f64() })),
    )
}
