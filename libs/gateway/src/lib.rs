//! The HTTP gateway (actix-web): API v1 for POS, HQ and the platform admin, built for the
//! checkout path. Handlers validate, authenticate and resolve; effects travel the event log to
//! the member's single writer (see `loyalty_core::engine`).

pub mod json;
pub mod limits;
pub mod pages;
pub mod problem;
pub mod qr;
pub mod routes;
pub mod routing;
pub mod state;
pub mod trace;

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::web;
use actix_web::HttpMessage;
use tracing::Instrument;

pub use problem::ApiError;
pub use routing::limit_request_head;
pub use state::{Gateway, GatewayConfig};

/// Registers every route, with body, query and path errors mapped to problems. Each path is
/// one [`routing::endpoint`]: `GET` also answers `HEAD`, and a method the path does not take is
/// 405 with `Allow`. JSON bodies are read by [`json::JsonObject`] (objects only).
pub fn configure(cfg: &mut web::ServiceConfig, body: json::BodyLimit) {
    use routes::{
        admin, campaigns, consent, dashboard, enrolment, events, keys, members, ops, privacy,
        segments,
    };
    use routing::endpoint;
    cfg.app_data(body)
        .app_data(web::QueryConfig::default().error_handler(problem::query_error))
        .app_data(web::PathConfig::default().error_handler(problem::path_error))
        .service(endpoint("/healthz").get(ops::healthz))
        .service(endpoint("/readyz").get(ops::readyz))
        .service(endpoint("/metrics").get(ops::metrics))
        .service(endpoint("/openapi.json").get(ops::openapi))
        .service(
            web::scope("/v1")
                .wrap(from_fn(authenticate))
                .service(endpoint("/franchises").post(admin::create_franchise))
                .service(endpoint("/admin/cache/rebuild").post(admin::rebuild_cache))
                .service(
                    endpoint("/franchises/{fid}/program")
                        .put(admin::replace_program)
                        .get(admin::get_program),
                )
                .service(endpoint("/franchises/{fid}/stores").post(admin::create_store))
                .service(
                    endpoint("/franchises/{fid}/api-keys")
                        .get(keys::list)
                        .post(keys::create),
                )
                .service(endpoint("/franchises/{fid}/api-keys/{kid}").get(keys::get))
                .service(endpoint("/franchises/{fid}/api-keys/{kid}/rotate").post(keys::rotate))
                .service(endpoint("/franchises/{fid}/api-keys/{kid}/revoke").post(keys::revoke))
                .service(
                    endpoint("/franchises/{fid}/stores/{sid}/pos-signing-secret")
                        .get(admin::pos_signing_secret),
                )
                .service(
                    endpoint("/franchises/{fid}/stores/{sid}/enrolment-qr.svg")
                        .get(enrolment::qr_svg),
                )
                .service(
                    endpoint("/franchises/{fid}/stores/{sid}/enrolment-qr.png")
                        .get(enrolment::qr_png),
                )
                .service(
                    endpoint("/franchises/{fid}/stores/{sid}/enrolment-poster")
                        .get(enrolment::poster),
                )
                .service(endpoint("/franchises/{fid}/dashboard").get(dashboard::dashboard))
                .service(endpoint("/franchises/{fid}/dashboard.csv").get(dashboard::dashboard_csv))
                .service(endpoint("/franchises/{fid}/segments").get(segments::sizes))
                .service(endpoint("/franchises/{fid}/campaigns").get(campaigns::results))
                .service(
                    endpoint("/franchises/{fid}/segments/{segment}/members").get(segments::export),
                )
                .service(endpoint("/members").post(members::enrol))
                .service(endpoint("/members/lookup").get(members::lookup))
                .service(endpoint("/members/{member_id}").get(members::status))
                .service(endpoint("/members/{member_id}/ledger").get(members::ledger))
                .service(endpoint("/members/{member_id}/card-link").get(enrolment::card_link))
                .service(endpoint("/members/{member_id}/export").get(privacy::export))
                .service(endpoint("/members/{member_id}/erasure").post(privacy::erase))
                .service(endpoint("/purchases").post(events::purchase))
                .service(endpoint("/refunds").post(events::refund))
                .service(endpoint("/redemptions").post(events::redemption))
                .service(endpoint("/redemption-cancellations").post(events::cancel_redemption))
                .service(endpoint("/members/{member_id}/consent").put(consent::put))
                .service(endpoint("/redemption-codes/consume").post(events::consume_code)),
        )
        .configure(pages::configure)
        .default_service(web::to(not_found));
}

/// No such route: 404, as a problem.
pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
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
    // A read-only HQ key changes nothing, whatever the route (one to come included): any
    // method but GET and HEAD is 403 before its body is read.
    let principal = principal.and_then(|p| {
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        if p.role == loyalty_core::model::Role::HqReadOnly && !safe {
            Err(ApiError::Forbidden(state::READ_ONLY))
        } else {
            Ok(p)
        }
    });
    match principal {
        Ok(p) => {
            req.extensions_mut().insert(p);
            Ok(next.call(req).await?.map_into_left_body())
        }
        // Answered here, so the outer middleware still counts the request.
        Err(e) => Ok(req.error_response(e).map_into_right_body()),
    }
}

/// Counts requests and times them (`loyalty_http_*`) by route template (`unmatched` when no
/// route matches: never the raw path, which carries ids), method, status and status class;
/// each in its span when traces are on ([`trace::request_span`]). Requests that end in an
/// error are counted with the status it answers.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = trace::method_name(req.method());
    let span = trace::request_span(&req);
    let res = next.call(req).instrument(span.clone()).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    trace::record_status(&span, status);
    record_request(&route, method, status, start.elapsed());
    res
}

/// Counts a request body that did not arrive in time (`loyalty_http_body_timeouts_total`).
pub(crate) fn record_body_timeout() {
    loyalty_core::metrics::metrics().http_body_timeouts.inc();
    tracing::info!("request body timed out; connection closed");
}

/// Counts one request in `loyalty_http_requests_total` and its latency in
/// `loyalty_http_request_duration_seconds`.
fn record_request(
    route: &str,
    method: &str,
    status: actix_web::http::StatusCode,
    elapsed: std::time::Duration,
) {
    use loyalty_core::metrics::{metrics, status_class};
    let m = metrics();
    let class = status_class(status.as_u16());
    m.http_request_seconds
        .with_label_values(&[route, method, class])
        .observe(elapsed.as_secs_f64());
    m.http_requests
        .with_label_values(&[route, method, status.as_str(), class])
        .inc();
}
