//! Operations endpoints: liveness, readiness, metrics and the OpenAPI document.

use actix_web::{web, HttpResponse};

use crate::state::Gateway;

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

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(loyalty_core::metrics::metrics().render())
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}
