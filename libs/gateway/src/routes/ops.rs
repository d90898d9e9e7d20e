//! Operations endpoints: liveness, readiness, metrics and the OpenAPI document.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;
use crate::state::{bearer_key, Gateway};

/// The OpenAPI 3.1 description of API v1.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ready once the engine consumes: before that, accepted events would wait.
pub async fn readyz(gw: web::Data<Gateway>) -> HttpResponse {
    if gw.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("application/problem+json")
            .body(r#"{"type":"urn:loyalty:problem:not-ready","title":"Not ready","status":503,"detail":"the engine has not started consuming yet","code":"not-ready"}"#)
    }
}

/// Who may read `/metrics` (`LOYALTY_METRICS_LISTEN`, `LOYALTY_METRICS_KEY`), registered as
/// app data by the service. Without it, `/metrics` is open on the API listener (dev mode).
///
/// The figures name no member or key, but they tell a stranger the traffic of every store, so a
/// deployment keeps them inside: on a listener of their own that only the scraper reaches (the
/// API listener then answers 404 for `/metrics`, and the metrics listener nothing else), and/or
/// behind a key of their own (`Authorization: Bearer <key>`, 401 without it).
#[derive(Clone, Debug, Default)]
pub struct MetricsAccess {
    /// The port of the internal listener that alone serves `/metrics`.
    pub listener_port: Option<u16>,
    /// The key `/metrics` asks for.
    pub key: Option<String>,
}

impl MetricsAccess {
    /// Whether a request that arrived on `local_port` for `path` is served at all: `/metrics`
    /// only on the metrics listener, and nothing else there (but `/healthz`, for its probe).
    pub fn routes(&self, local_port: u16, path: &str) -> bool {
        match self.listener_port {
            None => true,
            Some(p) if p == local_port => path == "/metrics" || path == "/healthz",
            Some(_) => path != "/metrics",
        }
    }
}

/// Keeps `/metrics` on its listener, and that listener to `/metrics` ([`MetricsAccess::routes`]):
/// anything else is 404, as for a route that does not exist.
pub async fn metrics_listener(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let served = match req.app_data::<MetricsAccess>() {
        Some(access) => access.routes(req.request().app_config().local_addr().port(), req.path()),
        None => true,
    };
    if served {
        Ok(next.call(req).await?.map_into_left_body())
    } else {
        Ok(req
            .error_response(ApiError::NotFound("no such route".into()))
            .map_into_right_body())
    }
}

/// The Prometheus text exposition of this process's metrics; 401 without the metrics key when
/// one is configured.
pub async fn metrics(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(expected) = req
        .app_data::<MetricsAccess>()
        .and_then(|a| a.key.as_deref())
    {
        let given = bearer_key(req.headers())?;
        // Digests of equal length, compared whole: the time tells nothing of the key.
        if Sha256::digest(given.as_bytes()) != Sha256::digest(expected.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(loyalty_core::metrics::metrics().render()))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

#[cfg(test)]
mod tests {
    use super::MetricsAccess;

    #[test]
    fn metrics_stay_on_their_listener() {
        let open = MetricsAccess::default();
        assert!(open.routes(8080, "/metrics") && open.routes(8080, "/v1/members"));
        let inside = MetricsAccess {
            listener_port: Some(9090),
            key: None,
        };
        assert!(!inside.routes(8080, "/metrics"));
        assert!(inside.routes(8080, "/v1/purchases"));
        assert!(inside.routes(9090, "/metrics"));
        assert!(inside.routes(9090, "/healthz"));
        assert!(!inside.routes(9090, "/v1/purchases"));
        assert!(!inside.routes(9090, "/dashboard"));
    }
}
