//! Headquarters' segments (README "Segments"): each segment's size now and day by day (hq or
//! hq_read_only key), and the export of a segment's members (hq key only: it holds personal
//! data), their phone numbers masked unless `phones=full` is asked. A store key is 403, another
//! franchise 404, a segment the current program does not have 404.

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::metrics::metrics;
use loyalty_core::provisioning::now;
use loyalty_core::segments::{self, ExportQuery, MAX_EXPORT_LIMIT, MAX_SERIES_DAYS};
use loyalty_domain::{Day, MemberId, Program};
use serde::Deserialize;

use crate::problem::ApiError;
use crate::routes::admin::{own_franchise, own_franchise_reading};
use crate::state::Gateway;

/// The days of a series when none are asked.
const DEFAULT_SERIES_DAYS: u32 = 30;
/// Members of an export page when no limit is asked.
const DEFAULT_EXPORT_LIMIT: usize = 100;

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD`, both optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizesParams {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// `?limit=N&after=MEMBER&phones=masked|full`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    pub limit: Option<String>,
    pub after: Option<String>,
    pub phones: Option<String>,
}

fn query<T>(p: Result<web::Query<T>, actix_web::Error>) -> Result<T, ApiError> {
    p.map(web::Query::into_inner)
        .map_err(|e| ApiError::InvalidQuery(format!("query string: {e}")))
}

fn date(field: &str, v: Option<&str>) -> Result<Option<Day>, ApiError> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Day::parse_iso(s)
            .map(Some)
            .ok_or_else(|| ApiError::InvalidQuery(format!("{field} must be a date YYYY-MM-DD"))),
    }
}

/// The range of a series: `to` defaults to today (the program's local day), `from` to 29 days
/// before `to`; at most [`MAX_SERIES_DAYS`] days, `from` not after `to`.
fn range(p: &SizesParams, program: &Program) -> Result<(Day, Day), ApiError> {
    let to = date("to", p.to.as_deref())?.unwrap_or_else(|| program.local_day(now()));
    let from = date("from", p.from.as_deref())?
        .unwrap_or(Day(to.0.saturating_sub(DEFAULT_SERIES_DAYS - 1)));
    if from > to {
        return Err(ApiError::InvalidQuery(format!(
            "from ({}) is after to ({})",
            from.iso(),
            to.iso()
        )));
    }
    let days = to.0 - from.0 + 1;
    if days > MAX_SERIES_DAYS {
        return Err(ApiError::InvalidQuery(format!(
            "the range is {days} days; at most {MAX_SERIES_DAYS} are answered"
        )));
    }
    Ok((from, to))
}

/// `GET /v1/franchises/{fid}/segments`.
pub async fn sizes(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    params: Result<web::Query<SizesParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let f = own_franchise_reading(&gw, &req, &path).await?;
    let p = query(params)?;
    let program = gw.program(&f).await?;
    let (from, to) = range(&p, &program)?;
    let sizes = segments::segment_sizes(gw.store.as_ref(), &f, &program, from, to).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "private, no-store"))
        .json(sizes))
}

/// An export's query, validated.
fn export_query<'a>(segment: &'a str, p: ExportParams) -> Result<ExportQuery<'a>, ApiError> {
    let limit = match p.limit.as_deref() {
        None => DEFAULT_EXPORT_LIMIT,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_EXPORT_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidQuery(format!("limit must be 1 to {MAX_EXPORT_LIMIT}"))
            })?,
    };
    let after = match p.after.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(MemberId::parse(s).map_err(|_| {
            ApiError::InvalidQuery("after must be a member id (a page's next_after)".into())
        })?),
    };
    let full_phone = match p.phones.as_deref() {
        None | Some("masked") => false,
        Some("full") => true,
        Some(other) => {
            return Err(ApiError::InvalidQuery(format!(
                "phones must be `masked` or `full`, got {other:?}"
            )))
        }
    };
    Ok(ExportQuery {
        segment,
        after,
        limit,
        full_phone,
    })
}

/// `GET /v1/franchises/{fid}/segments/{segment}/members`: one page of the segment's members.
pub async fn export(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    params: Result<web::Query<ExportParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let (fid, name) = path.into_inner();
    let f = own_franchise(&gw, &req, &fid).await?;
    let key_id = gw.authenticate(&req).await?.key_id.unwrap_or_default();
    let program = gw.program(&f).await?;
    if !program.segments.as_ref().is_some_and(|s| s.has(&name)) {
        return Err(ApiError::NotFound(
            "no such segment in this franchise's program".into(),
        ));
    }
    let q = export_query(&name, query(params)?)?;
    let page = segments::export_page(gw.store.as_ref(), &f, &program, &q).await?;
    let phone = page.phone;
    metrics().segment_exports.with_label_values(&[phone]).inc();
    // The audit line: who exported what, never whom (no member id, no phone).
    tracing::info!(
        franchise = %f.id,
        segment = %name,
        key_id = %key_id,
        phone,
        members = page.members.len(),
        more = page.next_after.is_some(),
        "segment exported"
    );
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(page))
}
