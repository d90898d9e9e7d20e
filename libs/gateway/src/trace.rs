//! The span of one HTTP request (a server span, when traces are on: see
//! [`loyalty_core::trace`]), named by method and route template (`POST /v1/purchases`), with
//! the semantic conventions' `http.request.method`, `http.route`, `url.scheme` and
//! `http.response.status_code`, and the caller's W3C `traceparent` as its parent.
//!
//! No path, query or header value is recorded: paths carry member ids and lookups carry phone
//! numbers. Probes and scrapes (`/healthz`, `/readyz`, `/metrics`) get no span.

use actix_web::dev::ServiceRequest;
use actix_web::http::header::HeaderMap;
use actix_web::http::{Method, StatusCode};
use loyalty_core::trace::Extractor;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Routes that get no span.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The method as the conventions name it: one of the standard methods, else `_OTHER` (so a
/// client cannot make up label values).
pub fn method_name(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "_OTHER",
    }
}

/// The span of `req` ([`Span::none`] when traces are off or for an untraced route).
pub fn request_span(req: &ServiceRequest) -> Span {
    if !loyalty_core::trace::enabled() {
        return Span::none();
    }
    let route = req.match_pattern();
    if route.as_deref().is_some_and(|r| UNTRACED.contains(&r)) {
        return Span::none();
    }
    let method = method_name(req.method());
    let name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!(
        "http",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = Empty,
        http.response.status_code = Empty,
        url.scheme = %req.connection_info().scheme(),
        error.type = Empty,
    );
    if let Some(r) = &route {
        span.record("http.route", r.as_str());
    }
    let parent = loyalty_core::trace::remote_context(&Headers(req.headers()));
    let _ = span.set_parent(parent);
    span
}

/// Records the answer's status on the request's span (5xx marks it failed).
pub fn record_status(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method_name(&Method::POST), "POST");
        let custom = Method::from_bytes(b"PURGE").expect("a token");
        assert_eq!(method_name(&custom), "_OTHER");
    }
}
