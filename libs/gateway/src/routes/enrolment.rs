//! Members without an app: a store's printable enrolment QR code (SVG, PNG) and poster, and the
//! signed link to a member's card page (see `crate::pages::member` for the pages themselves).

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::model::Role;
use loyalty_domain::MemberId;
use serde::Deserialize;

use crate::pages::member::{self, PosterQuery, DEFAULT_LINK_DAYS, MAX_LINK_DAYS};
use crate::problem::ApiError;
use crate::qr;
use crate::state::Gateway;

/// The side of the SVG code, in px (it scales: it is a vector).
const SVG_SIZE: u32 = 512;

/// A QR code query takes no parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

fn query<T>(q: Result<web::Query<T>, actix_web::Error>) -> Result<T, ApiError> {
    q.map(web::Query::into_inner)
        .map_err(|e| ApiError::InvalidQuery(format!("query string: {e}")))
}

/// `GET /v1/franchises/{fid}/stores/{sid}/enrolment-qr.svg` (hq, that store).
pub async fn qr_svg(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    q: Result<web::Query<NoQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    qr_image(req, gw, path, q, QrFormat::Svg).await
}

/// `GET /v1/franchises/{fid}/stores/{sid}/enrolment-qr.png` (hq, that store).
pub async fn qr_png(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    q: Result<web::Query<NoQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    qr_image(req, gw, path, q, QrFormat::Png).await
}

#[derive(Clone, Copy)]
enum QrFormat {
    Svg,
    Png,
}

/// The store's enrolment QR code as an image, for the caller's store (or its franchise's HQ).
async fn qr_image(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    q: Result<web::Query<NoQuery>, actix_web::Error>,
    format: QrFormat,
) -> Result<HttpResponse, ApiError> {
    let (fid, sid) = path.into_inner();
    let (f, store) = member::caller_store(&gw, &req, &fid, &sid).await?;
    query(q)?;
    let url = member::enrolment_url(&gw, &f, &store.id);
    let (content_type, extension, body) = match format {
        QrFormat::Svg => (
            "image/svg+xml",
            "svg",
            qr::svg_document(&url, SVG_SIZE)?.into_bytes(),
        ),
        QrFormat::Png => ("image/png", "png", qr::png(&url)?),
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "private, max-age=3600"))
        .insert_header((
            "Content-Disposition",
            format!("inline; filename=\"enrolment-{}.{extension}\"", store.id),
        ))
        .body(body))
}

/// `GET /v1/franchises/{fid}/stores/{sid}/enrolment-poster[?lang=fr|en][&size=a5|a6]` (hq,
/// that store): the printable poster, one self-contained HTML page.
pub async fn poster(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    q: Result<web::Query<PosterQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let (fid, sid) = path.into_inner();
    let (f, store) = member::caller_store(&gw, &req, &fid, &sid).await?;
    let (lang, paper) = query(q)?.resolve(&req)?;
    member::poster(&gw, &f, &store, lang, paper).await
}

/// `?valid_days=N` of a card link.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardLinkQuery {
    pub valid_days: Option<u64>,
}

/// `GET /v1/members/{member_id}/card-link[?valid_days=N]` (store, hq): a signed link to the
/// member's card page, to show at the till or send to the member.
pub async fn card_link(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    q: Result<web::Query<CardLinkQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let p = gw
        .authorize(&req, &[Role::Store, Role::Hq, Role::HqReadOnly])
        .await?;
    let f = gw.franchise_of(&p).await?;
    let member = MemberId::parse(&path).map_err(|_| ApiError::unknown_member())?;
    let days = query(q)?.valid_days.unwrap_or(u64::from(DEFAULT_LINK_DAYS));
    if !(1..=u64::from(MAX_LINK_DAYS)).contains(&days) {
        return Err(ApiError::InvalidQuery(format!(
            "valid_days must be 1 to {MAX_LINK_DAYS}, got {days}"
        )));
    }
    let status = gw
        .member_status(&f, &member)
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    // An erased member has no card any more (README "Privacy"): as unknown as any other.
    if super::privacy::status_is_erased(&status.json) {
        return Err(ApiError::unknown_member());
    }
    let (url, expires) = member::card_link(&gw, &f, &member, days as u32);
    let expires_at = time::OffsetDateTime::from_unix_timestamp(expires)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .ok_or_else(|| ApiError::Internal("expiry out of range".into()))?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({
            "member_id": member,
            "url": url,
            "expires_at": expires_at,
        })))
}
