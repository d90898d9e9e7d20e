//! Headquarters' campaign results (README "Campaigns"): per campaign of the current program,
//! what fired, what the outbox sent and delivered, and what came of it, over a range of local
//! days. The dashboard's rules: an hq or hq_read_only key of the franchise (a store key or the
//! admin key is 403, another franchise 404), `from` and `to` required, at most
//! [`loyalty_domain::dashboard::MAX_RANGE_DAYS`] days, a bad range 400 `invalid-query`.

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::campaigns;
use loyalty_core::dashboard::DashboardQuery;
use serde::Deserialize;

use crate::problem::ApiError;
use crate::routes::admin::own_franchise_reading;
use crate::state::Gateway;

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD`, both required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsParams {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The range asked, validated as the dashboard validates its own.
fn range(
    p: Result<web::Query<ResultsParams>, actix_web::Error>,
) -> Result<DashboardQuery, ApiError> {
    let p = p
        .map_err(|e| ApiError::InvalidQuery(format!("query string: {e}")))?
        .into_inner();
    let (Some(from), Some(to)) = (p.from.as_deref(), p.to.as_deref()) else {
        return Err(ApiError::InvalidQuery(
            "from and to are required: ?from=YYYY-MM-DD&to=YYYY-MM-DD".into(),
        ));
    };
    DashboardQuery::parse(from, to, None, false).map_err(|e| ApiError::InvalidQuery(e.to_string()))
}

/// `GET /v1/franchises/{fid}/campaigns`.
pub async fn results(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    params: Result<web::Query<ResultsParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    // Who asks comes first: a store key or another franchise learns nothing from its query.
    let f = own_franchise_reading(&gw, &req, &path).await?;
    let q = range(params)?;
    let program = gw.program(&f).await?;
    let r = campaigns::campaign_results(gw.store.as_ref(), &f, &program, q.from, q.to).await?;
    tracing::debug!(
        franchise = %f.id,
        campaigns = r.campaigns.len(),
        days = q.days(),
        "campaign results read"
    );
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "private, no-store"))
        .json(r))
}
