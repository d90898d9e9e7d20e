//! A franchise's API keys: listed (never their secret), created, rotated (a new secret, shown
//! once; the old one stops working) and revoked (for ever). HQ manages its franchise's store
//! and read-only HQ keys, and its own key; the platform admin manages every key of any
//! franchise, HQ keys included. A read-only HQ key may list them, nothing more; a store key
//! nothing. Another franchise is answered as unknown (404).
//!
//! A change through this gateway is effective on it at once (it forgets the key before it
//! answers); every other gateway forgets the key when the change's announcement reaches it
//! (`loyalty_core::key_changes`), and within its principal cache's TTL if it is lost.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::identity::is_api_key_id;
use loyalty_core::model::{ApiKey, Franchise, Principal, Role};
use loyalty_core::provisioning;
use loyalty_domain::{FranchiseId, StoreId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::json::JsonObject;
use crate::problem::ApiError;
use crate::state::{Gateway, READ_ONLY};

/// Tries of a rotation or revocation that another request changed meanwhile (each reads the
/// key again).
const ATTEMPTS: usize = 3;

/// What is shown of a key: everything but its hash.
fn view(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "role": k.role,
        "store_id": k.store_id,
        "prefix": k.prefix,
        "created_at": k.created_at,
        "rotated_at": k.rotated_at,
        "revoked_at": k.revoked_at,
        "active": !k.is_revoked(),
    })
}

/// A key with its secret, which is shown this once.
fn with_secret(k: &ApiKey, secret: &str) -> HttpResponse {
    let mut v = view(k);
    if let Some(o) = v.as_object_mut() {
        o.insert("api_key".into(), Value::String(secret.to_owned()));
    }
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(v)
}

fn no_franchise() -> ApiError {
    ApiError::NotFound("no such franchise".into())
}

fn no_key() -> ApiError {
    ApiError::NotFound("no such API key in this franchise".into())
}

/// The caller and the franchise named in the path: the admin (any franchise), or an HQ key of
/// that franchise (read-only ones when `write` is false). Another role is 403, another
/// franchise 404.
async fn scope(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
    write: bool,
) -> Result<(Principal, Arc<Franchise>), ApiError> {
    let p = gw.authenticate(req).await?;
    match p.role {
        Role::Admin | Role::Hq => {}
        Role::HqReadOnly if !write => {}
        Role::HqReadOnly => return Err(ApiError::Forbidden(READ_ONLY)),
        Role::Store => {
            return Err(ApiError::Forbidden(
                "only the platform admin key or an HQ key may manage API keys",
            ))
        }
    }
    let fid = FranchiseId::parse(fid).map_err(|_| no_franchise())?;
    if p.role != Role::Admin && p.franchise_id.as_ref() != Some(&fid) {
        return Err(no_franchise());
    }
    let f = gw.franchise(&fid).await?.ok_or_else(no_franchise)?;
    Ok((p, f))
}

/// Key `kid` of `f`.
async fn key_of(gw: &Gateway, f: &Franchise, kid: &str) -> Result<ApiKey, ApiError> {
    if !is_api_key_id(kid) {
        return Err(no_key());
    }
    gw.store
        .api_key_record(&f.id, kid)
        .await?
        .ok_or_else(no_key)
}

/// Whether `p` may rotate or revoke `k`: the admin any key; HQ its own key and the keys below
/// it (store and read-only HQ keys), not another HQ key.
fn may_change(p: &Principal, k: &ApiKey) -> Result<(), ApiError> {
    let own = p.key_id.as_deref() == Some(k.id.as_str());
    if p.role == Role::Admin || own || k.role != Role::Hq {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the platform admin key may rotate or revoke another HQ key",
        ))
    }
}

/// `GET /v1/franchises/{fid}/api-keys` (admin, hq, hq_read_only): every key of the
/// franchise, revoked ones included, oldest first; never a secret nor its hash.
pub async fn list(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, f) = scope(&gw, &req, &path, false).await?;
    let mut keys = gw.store.api_keys_of(&f.id).await?;
    keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let keys: Vec<Value> = keys.iter().map(view).collect();
    Ok(HttpResponse::Ok().json(json!({ "franchise_id": f.id, "keys": keys })))
}

/// `GET /v1/franchises/{fid}/api-keys/{kid}` (admin, hq, hq_read_only).
pub async fn get(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (fid, kid) = path.into_inner();
    let (_, f) = scope(&gw, &req, &fid, false).await?;
    let k = key_of(&gw, &f, &kid).await?;
    Ok(HttpResponse::Ok().json(view(&k)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub role: String,
    pub store_id: Option<String>,
}

/// `POST /v1/franchises/{fid}/api-keys` (admin, hq): a new key, its secret shown this once.
/// `{"role": "store", "store_id": …}` for a store of the franchise, `{"role": "hq_read_only"}`,
/// or (admin only) `{"role": "hq"}`.
pub async fn create(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    body: JsonObject<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let (p, f) = scope(&gw, &req, &path, true).await?;
    let body = body.into_inner();
    let role = match body.role.as_str() {
        "store" => Role::Store,
        "hq_read_only" => Role::HqReadOnly,
        "hq" => Role::Hq,
        other => {
            return Err(ApiError::Invalid(format!(
                "role must be store, hq_read_only or hq, got {other:?}"
            )))
        }
    };
    if role == Role::Hq && p.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "only the platform admin key may create an HQ key",
        ));
    }
    let store_id = match (role, body.store_id) {
        (Role::Store, Some(sid)) => {
            let not_found = || ApiError::NotFound("no such store in this franchise".into());
            let sid = StoreId::parse(&sid).map_err(|_| not_found())?;
            match gw.store.store(&sid).await? {
                Some(s) if s.franchise_id == f.id => Some(sid),
                _ => return Err(not_found()),
            }
        }
        (Role::Store, None) => {
            return Err(ApiError::Invalid("a store key needs its store_id".into()))
        }
        (_, Some(_)) => return Err(ApiError::Invalid("store_id is for store keys only".into())),
        (_, None) => None,
    };
    let (k, secret) = provisioning::create_api_key(gw.store.as_ref(), &f.id, role, store_id)
        .await
        .map_err(|e| match e {
            loyalty_core::Error::Invalid(m) => ApiError::Invalid(m),
            other => other.into(),
        })?;
    // Ids and roles only: never a secret nor its hash.
    tracing::info!(franchise = %f.id, key_id = %k.id, role = role.as_str(), by_role = p.role.as_str(), by_key = p.key_id.as_deref().unwrap_or("admin"), "API key created");
    let mut resp = with_secret(&k, &secret);
    *resp.status_mut() = actix_web::http::StatusCode::CREATED;
    Ok(resp)
}

/// What a rotation or a revocation does to a key as read.
enum Change {
    Rotate,
    Revoke,
}

/// Applies `change` to key `kid`, reading it again when another request changed it meanwhile;
/// the old secret is forgotten by this gateway before the answer.
async fn change(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
    kid: &str,
    change: Change,
) -> Result<(ApiKey, Option<String>), ApiError> {
    let (p, f) = scope(gw, req, fid, true).await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let k = key_of(gw, &f, kid).await?;
        may_change(&p, &k)?;
        let result = match change {
            Change::Rotate => provisioning::rotate_api_key(gw.store.as_ref(), &k)
                .await
                .map(|(k, s)| (k, Some(s))),
            Change::Revoke => provisioning::revoke_api_key(gw.store.as_ref(), &k)
                .await
                .map(|k| (k, None)),
        };
        match result {
            Ok(done) => {
                gw.forget_key(&k.key_hash);
                let operation = match change {
                    Change::Rotate => "rotated",
                    Change::Revoke => "revoked",
                };
                tracing::info!(franchise = %f.id, key_id = %k.id, role = k.role.as_str(), by_role = p.role.as_str(), by_key = p.key_id.as_deref().unwrap_or("admin"), operation, "API key changed");
                return Ok(done);
            }
            Err(loyalty_core::Error::Invalid(m)) => return Err(ApiError::KeyConflict(m)),
            Err(loyalty_core::Error::Conflict(m)) if attempt < ATTEMPTS => {
                tracing::info!(key_id = %k.id, attempt, conflict = %m, "API key changed meanwhile; reading it again");
            }
            Err(loyalty_core::Error::Conflict(_)) => {
                return Err(ApiError::KeyConflict(format!(
                    "key {} was changed by other requests at the same time; nothing was changed: read it, then try again",
                    k.id
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `POST /v1/franchises/{fid}/api-keys/{kid}/rotate` (admin, hq): a new secret for the key,
/// shown this once; the old secret stops working. A revoked key is 409 `key-conflict`.
pub async fn rotate(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (fid, kid) = path.into_inner();
    let (k, secret) = change(&gw, &req, &fid, &kid, Change::Rotate).await?;
    Ok(with_secret(&k, secret.as_deref().unwrap_or_default()))
}

/// `POST /v1/franchises/{fid}/api-keys/{kid}/revoke` (admin, hq): revokes the key, for ever
/// (its record stays, listed as revoked: hence a POST, not a DELETE of the resource). Revoking
/// a revoked key answers it as it is.
pub async fn revoke(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (fid, kid) = path.into_inner();
    let (k, _) = change(&gw, &req, &fid, &kid, Change::Revoke).await?;
    Ok(HttpResponse::Ok().json(view(&k)))
}
