//! Headquarters' dashboard: KPIs of a range of days as JSON, or the daily rows per store as
//! CSV (hq key; a store key is 403, another franchise 404). Read from the stored daily
//! aggregates, whatever the number of members.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::dashboard::{self, DashboardQuery};
use loyalty_core::model::Franchise;
use loyalty_domain::{Program, StoreId};
use serde::Deserialize;

use crate::problem::ApiError;
use crate::routes::admin::own_franchise_reading;
use crate::state::Gateway;

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD[&store=ID][&compare=previous]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub store: Option<String>,
    pub compare: Option<String>,
}

/// The preamble of both forms: the caller's franchise, its current program and the query.
async fn resolve(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
    p: Result<web::Query<DashboardParams>, actix_web::Error>,
) -> Result<(Arc<Franchise>, Arc<Program>, DashboardQuery), ApiError> {
    // Who asks comes first: a store key or another franchise learns nothing from its query.
    let f = own_franchise_reading(gw, req, fid).await?;
    let (program, q) = query_of(gw, &f, p).await?;
    Ok((f, program, q))
}

/// The query string of a dashboard of `f` (already authorized), validated: `f`'s current
/// program and the query, or a 400 `invalid-query` (a 404 for a store of another franchise).
/// Shared by the API and the dashboard page (`crate::pages`).
pub(crate) async fn query_of(
    gw: &Gateway,
    f: &Franchise,
    p: Result<web::Query<DashboardParams>, actix_web::Error>,
) -> Result<(Arc<Program>, DashboardQuery), ApiError> {
    let p = p
        .map_err(|e| ApiError::InvalidQuery(format!("query string: {e}")))?
        .into_inner();
    let (Some(from), Some(to)) = (p.from.as_deref(), p.to.as_deref()) else {
        return Err(ApiError::InvalidQuery(
            "from and to are required: ?from=YYYY-MM-DD&to=YYYY-MM-DD".into(),
        ));
    };
    let compare = match p.compare.as_deref() {
        None | Some("") => false,
        Some("previous") => true,
        Some(other) => {
            return Err(ApiError::InvalidQuery(format!(
                "compare must be `previous`, got {other:?}"
            )))
        }
    };
    let store = match p.store.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(franchise_store(gw, f, s).await?),
    };
    let q = DashboardQuery::parse(from, to, store, compare)
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    let program = gw.program(f).await?;
    Ok((program, q))
}

/// The store `id` of the franchise; any other is 404.
async fn franchise_store(gw: &Gateway, f: &Franchise, id: &str) -> Result<StoreId, ApiError> {
    let not_found = || ApiError::NotFound("no such store in this franchise".into());
    let sid = StoreId::parse(id).map_err(|_| not_found())?;
    match gw.store.store(&sid).await? {
        Some(s) if s.franchise_id == f.id => Ok(sid),
        _ => Err(not_found()),
    }
}

/// `GET /v1/franchises/{fid}/dashboard`.
pub async fn dashboard(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    params: Result<web::Query<DashboardParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let (f, program, q) = resolve(&gw, &req, &path, params).await?;
    json_response(&gw, &f, &program, &q).await
}

/// The dashboard of `f` for `q` as JSON; shared with the dashboard page.
pub(crate) async fn json_response(
    gw: &Gateway,
    f: &Franchise,
    program: &Program,
    q: &DashboardQuery,
) -> Result<HttpResponse, ApiError> {
    let d = dashboard::dashboard(gw.store.as_ref(), f, program, q).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "private, no-store"))
        .json(d))
}

/// `GET /v1/franchises/{fid}/dashboard.csv`: one row per store per day.
pub async fn dashboard_csv(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    params: Result<web::Query<DashboardParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let (f, _, q) = resolve(&gw, &req, &path, params).await?;
    csv_response(&gw, &f, &q).await
}

/// The CSV of `f` for `q` as a download (its content type and file name); shared with the
/// dashboard page.
pub(crate) async fn csv_response(
    gw: &Gateway,
    f: &Franchise,
    q: &DashboardQuery,
) -> Result<HttpResponse, ApiError> {
    let csv = dashboard::dashboard_csv(gw.store.as_ref(), f, q).await?;
    let name = format!("dashboard-{}-{}-{}.csv", f.id, q.from.iso(), q.to.iso());
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header(("Cache-Control", "private, no-store"))
        .body(csv))
}
