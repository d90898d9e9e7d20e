//! The HTTP gateway (actix-web): API v1 for POS, HQ and the platform admin, built for the
//! checkout path. Handlers validate, authenticate and resolve; effects travel the event log to
//! the member's single writer (see `loyalty_core::engine`).

pub mod pages;
pub mod problem;
pub mod routes;
pub mod state;

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::web;
use actix_web::HttpMessage;

pub use problem::ApiError;
pub use state::{Gateway, GatewayConfig};

/// Registers every route, with body, query and path errors mapped to problems.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    use routes::{admin, dashboard, events, members, ops};
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body_bytes)
            .error_handler(problem::json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(problem::query_error))
    .app_data(web::PathConfig::default().error_handler(problem::path_error))
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/metrics", web::get().to(ops::metrics))
    .route("/openapi.json", web::get().to(ops::openapi))
    .service(
        web::scope("/v1")
            .wrap(from_fn(authenticate))
            .route("/franchises", web::post().to(admin::create_franchise))
            .route("/admin/cache/rebuild", web::post().to(admin::rebuild_cache))
            .route(
                "/franchises/{fid}/program",
                web::put().to(admin::replace_program),
            )
            .route(
                "/franchises/{fid}/program",
                web::get().to(admin::get_program),
            )
            .route(
                "/franchises/{fid}/stores",
                web::post().to(admin::create_store),
            )
            .route(
                "/franchises/{fid}/stores/{sid}/pos-signing-secret",
                web::get().to(admin::pos_signing_secret),
            )
            .route(
                "/franchises/{fid}/dashboard",
                web::get().to(dashboard::dashboard),
            )
            .route(
                "/franchises/{fid}/dashboard.csv",
                web::get().to(dashboard::dashboard_csv),
            )
            .route("/members", web::post().to(members::enrol))
            .route("/members/lookup", web::get().to(members::lookup))
            .route("/members/{member_id}", web::get().to(members::status))
            .route(
                "/members/{member_id}/ledger",
                web::get().to(members::ledger),
            )
            .route("/purchases", web::post().to(events::purchase))
            .route("/refunds", web::post().to(events::refund))
            .route("/redemptions", web::post().to(events::redemption)),
    )
    .configure(pages::configure)
    .default_service(web::to(not_found));
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// Authenticates every `/v1` request before its body is read, and hands the principal to the
/// handlers through the request's extensions.
async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let principal = match req.app_data::<web::Data<Gateway>>().cloned() {
        Some(gw) => gw.authenticate(req.request()).await,
        None => Err(ApiError::Internal("gateway state missing".into())),
    };
    match principal {
        Ok(p) => {
            req.extensions_mut().insert(p);
            Ok(next.call(req).await?.map_into_left_body())
        }
        // Answered here, so the outer middleware still counts the request.
        Err(e) => Ok(req.error_response(e).map_into_right_body()),
    }
}

/// Counts requests by route pattern and status and times them (`loyalty_http_*`).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let m = loyalty_core::metrics::metrics();
    m.http_request_seconds
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[&route, res.status().as_str()])
        .inc();
    Ok(res)
}
