//! How routes are registered, and what is refused before any route runs.
//!
//! - [`endpoint`]: one resource per path with the handler of each method it takes. `GET` also
//!   answers `HEAD` (same status and headers, no body: the HTTP codec drops it), and any other
//!   method on a known path (`TRACE`, `OPTIONS`, `DELETE`…) is 405 `method-not-allowed` with the
//!   `Allow` header (RFC 9110 §15.5.6) instead of a 404.
//! - [`limit_request_head`]: a request target or a header section over the gateway's limits
//!   is 414 `uri-too-long` / 431 `headers-too-large`, as problems. The limits are below those of
//!   the HTTP codec (actix-http 3), which refuses what it cannot parse or buffer before the
//!   application sees it (a URI over 64 KiB or an invalid byte: 400; a head over 128 KiB or
//!   over 96 headers: 431) with an empty body: it offers no hook for a body there.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{AppService, HttpServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{guard, web, FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder};

use crate::problem::ApiError;

/// The longest request target (path and query) accepted, in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The largest header section accepted (names and values), in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most header fields accepted.
pub const MAX_HEADERS: usize = 64;

/// The resource at `path` (relative to its scope), with no method yet.
pub fn endpoint(path: &str) -> Endpoint {
    Endpoint {
        resource: web::resource(path),
        allow: Vec::new(),
    }
}

/// A resource being registered: its routes by method, and what its 405 answers allow.
pub struct Endpoint {
    resource: Resource,
    allow: Vec<&'static str>,
}

impl Endpoint {
    /// `GET` (and `HEAD`) to `handler`.
    pub fn get<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let route = web::route()
            .guard(guard::Any(guard::Get()).or(guard::Head()))
            .to(handler);
        self.with(&["GET", "HEAD"], route)
    }

    /// `POST` to `handler`.
    pub fn post<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.with(&["POST"], web::post().to(handler))
    }

    /// `PUT` to `handler`.
    pub fn put<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.with(&["PUT"], web::put().to(handler))
    }

    fn with(mut self, methods: &[&'static str], route: actix_web::Route) -> Self {
        self.resource = self.resource.route(route);
        self.allow.extend_from_slice(methods);
        self
    }
}

impl HttpServiceFactory for Endpoint {
    fn register(self, config: &mut AppService) {
        let mut allow = self.allow;
        allow.sort_unstable();
        allow.dedup();
        let allow = allow.join(", ");
        let not_allowed = move |req: HttpRequest| {
            let e = ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                path: req.path().to_owned(),
                allow: allow.clone(),
            };
            async move { Err::<HttpResponse, _>(e) }
        };
        self.resource
            .default_service(web::to(not_allowed))
            .register(config)
    }
}

/// Why the request's head is refused, if it is over the limits.
pub fn check_request_head(req: &HttpRequest) -> Result<(), ApiError> {
    let uri = req.uri();
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if length > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong {
            length,
            limit: MAX_URI_BYTES,
        });
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge(format!(
            "the request has {} header fields; at most {MAX_HEADERS} are accepted",
            headers.len()
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge(format!(
            "the request's header fields take {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
        )));
    }
    Ok(())
}

/// Refuses a request whose head is over the gateway's limits ([`check_request_head`]) before
/// routing; registered on the gateway's `App`.
pub async fn limit_request_head(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match check_request_head(req.request()) {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => Ok(req.error_response(e).map_into_right_body()),
    }
}
