//! Every error the API answers, and its one mapping to an RFC 9457 problem
//! (`application/problem+json` with `type`, `title`, `status`, `detail` and a stable `code`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use loyalty_domain::{DomainError, Rejection};
use serde_json::json;

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid `Authorization: Bearer <key>` header is required")]
    Unauthorized,
    /// More than one `Authorization` header: which one is meant is not for the server to guess
    /// (RFC 6750 §3.1 `invalid_request`; RFC 9110 §5.3: the field is not a list).
    #[error("the request has {0} `Authorization` headers; send exactly one")]
    AmbiguousAuthorization(usize),
    #[error("this key may not do that: {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    /// A known path with a method it does not take; `allow` lists those it takes.
    #[error("{path} does not take {method}; it takes {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("the request target is {length} bytes long; at most {limit} are accepted")]
    UriTooLong { length: usize, limit: usize },
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    Invalid(String),
    /// Query parameters that do not make a question (dates, ranges): 400.
    #[error("{0}")]
    InvalidQuery(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body did not arrive whole within the configured time (`LOYALTY_BODY_TIMEOUT_MS`):
    /// a client too slow to send it may not hold the connection. The connection is closed.
    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout { ms: u64 },
    #[error("the request body must be `application/json`")]
    UnsupportedMediaType,
    #[error("the event id {0} was already used for a different request")]
    IdempotencyConflict(String),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("refunds of anonymous sales are not supported: they earned no points")]
    AnonymousRefund,
    /// Another program update of the franchise won the race for the next version (through
    /// another gateway): nothing was changed; read the program and send the update again.
    #[error("{0}")]
    ProgramConflict(String),
    /// An API key that cannot be changed so: revoked (for ever), or changed by another request
    /// at the same time (nothing was changed; read the key and try again).
    #[error("{0}")]
    KeyConflict(String),
    /// Too many phone lookups for this key or this client address (`crate::limits`).
    #[error("too many phone lookups for this {scope}; retry in {} s", retry_after_secs(*retry_after))]
    RateLimited {
        scope: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("a backing service is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable, URL-friendly code of the problem.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::AmbiguousAuthorization(_) => "ambiguous-authorization",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed { .. } => "method-not-allowed",
            ApiError::UriTooLong { .. } => "uri-too-long",
            ApiError::HeadersTooLarge(_) => "headers-too-large",
            ApiError::MalformedJson(_) => "malformed-json",
            ApiError::Invalid(_) => "invalid-request",
            ApiError::InvalidQuery(_) => "invalid-query",
            ApiError::PayloadTooLarge { .. } => "payload-too-large",
            ApiError::BodyTimeout { .. } => "request-timeout",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::IdempotencyConflict(_) => "idempotency-conflict",
            ApiError::Rejected(r) => r.code(),
            ApiError::AnonymousRefund => "anonymous-refund",
            ApiError::ProgramConflict(_) => "program-conflict",
            ApiError::KeyConflict(_) => "key-conflict",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "Missing or invalid API key",
            ApiError::AmbiguousAuthorization(_) => "Ambiguous credentials",
            ApiError::Forbidden(_) => "Not allowed for this key",
            ApiError::NotFound(_) => "Not found",
            ApiError::MethodNotAllowed { .. } => "Method not allowed",
            ApiError::UriTooLong { .. } => "URI too long",
            ApiError::HeadersTooLarge(_) => "Request headers too large",
            ApiError::MalformedJson(_) => "Malformed JSON",
            ApiError::Invalid(_) => "Invalid request",
            ApiError::InvalidQuery(_) => "Invalid query",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::BodyTimeout { .. } => "Request body timeout",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::IdempotencyConflict(_) => "Idempotency key reused",
            ApiError::Rejected(Rejection::InsufficientPoints { .. }) => "Insufficient points",
            ApiError::Rejected(Rejection::UnknownMember) => "Unknown member",
            ApiError::Rejected(Rejection::UnknownReward { .. }) => "Unknown reward",
            ApiError::Rejected(Rejection::UnknownPurchase { .. }) => "Unknown purchase",
            ApiError::Rejected(Rejection::RefundExceedsPurchase { .. }) => {
                "Refund exceeds purchase"
            }
            ApiError::Rejected(Rejection::CurrencyMismatch { .. }) => "Wrong currency",
            ApiError::Rejected(Rejection::LimitExceeded { .. }) => "Limit exceeded",
            ApiError::Rejected(Rejection::MemberErased) => "Member erased",
            ApiError::Rejected(Rejection::RewardNotValid { .. }) => "Reward not valid today",
            ApiError::Rejected(Rejection::RedemptionLimitReached { .. }) => {
                "Redemption limit reached"
            }
            ApiError::Rejected(Rejection::UnknownRedemption { .. }) => "Unknown redemption",
            ApiError::Rejected(Rejection::RedemptionAlreadyCancelled { .. }) => {
                "Redemption already cancelled"
            }
            ApiError::Rejected(Rejection::CancellationWindowClosed { .. }) => {
                "Cancellation window closed"
            }
            ApiError::Rejected(Rejection::EmailRequired) => "E-mail address required",
            ApiError::Rejected(Rejection::RedemptionCodesNotOffered) => {
                "Redemption codes not offered"
            }
            ApiError::Rejected(Rejection::UnknownCode) => "Unknown code",
            ApiError::Rejected(Rejection::CodeAlreadyUsed { .. }) => "Code already used",
            ApiError::Rejected(Rejection::CodeExpired { .. }) => "Code expired",
            ApiError::Rejected(Rejection::CodeVoided { .. }) => "Code voided",
            ApiError::AnonymousRefund => "Anonymous refund",
            ApiError::ProgramConflict(_) => "Concurrent program update",
            ApiError::KeyConflict(_) => "API key conflict",
            ApiError::RateLimited { .. } => "Too many requests",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::Internal(_) => "Internal error",
        }
    }

    /// A member that does not exist or belongs to another franchise: the same answer, so a
    /// key never learns anything about another franchise.
    pub fn unknown_member() -> ApiError {
        ApiError::Rejected(Rejection::UnknownMember)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl From<loyalty_core::Error> for ApiError {
    fn from(e: loyalty_core::Error) -> Self {
        match e {
            loyalty_core::Error::Unavailable(m) => ApiError::Unavailable(m),
            loyalty_core::Error::ShuttingDown => ApiError::Unavailable("shutting down".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::MalformedJson(_)
            | ApiError::InvalidQuery(_)
            | ApiError::AmbiguousAuthorization(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) | ApiError::AnonymousRefund => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::IdempotencyConflict(_)
            | ApiError::ProgramConflict(_)
            | ApiError::KeyConflict(_) => StatusCode::CONFLICT,
            ApiError::Rejected(r) => match r {
                Rejection::InsufficientPoints { .. }
                | Rejection::RefundExceedsPurchase { .. }
                | Rejection::MemberErased
                | Rejection::RewardNotValid { .. }
                | Rejection::RedemptionLimitReached { .. }
                | Rejection::RedemptionAlreadyCancelled { .. }
                | Rejection::CancellationWindowClosed { .. }
                | Rejection::EmailRequired
                | Rejection::CodeAlreadyUsed { .. }
                | Rejection::CodeVoided { .. } => StatusCode::CONFLICT,
                Rejection::UnknownMember
                | Rejection::UnknownPurchase { .. }
                | Rejection::UnknownRedemption { .. }
                | Rejection::UnknownCode => StatusCode::NOT_FOUND,
                Rejection::UnknownReward { .. }
                | Rejection::CurrencyMismatch { .. }
                | Rejection::LimitExceeded { .. }
                | Rejection::RedemptionCodesNotOffered
                | Rejection::CodeExpired { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        // ERROR is for the server's own faults only. A backing service down is a warning (it
        // is retried and alerted on by its own metrics); a client's bad request is DEBUG: it
        // is the client's to fix, and its rate is in `loyalty_http_requests_total`.
        let detail = match self {
            // Internal details go to the log, not to the client.
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                "the server failed to handle the request; it has been logged".to_owned()
            }
            ApiError::Unavailable(m) => {
                tracing::warn!(error = %m, "answered 503: a backing service is unavailable");
                self.to_string()
            }
            other => {
                tracing::debug!(status = status.as_u16(), code = other.code(), detail = %other, "client error");
                other.to_string()
            }
        };
        let mut body = json!({
            "type": format!("urn:loyalty:problem:{}", self.code()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": detail,
            "code": self.code(),
        });
        if let ApiError::Rejected(r) = self {
            if let (Some(obj), Ok(serde_json::Value::Object(extra))) =
                (body.as_object_mut(), serde_json::to_value(r))
            {
                for (k, v) in extra {
                    obj.entry(k).or_insert(v);
                }
            }
        }
        let mut resp = HttpResponse::build(status);
        resp.content_type("application/problem+json");
        match self {
            ApiError::Unauthorized => {
                resp.insert_header(("WWW-Authenticate", "Bearer"));
            }
            ApiError::AmbiguousAuthorization(_) => {
                resp.insert_header(("WWW-Authenticate", r#"Bearer error="invalid_request""#));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                resp.insert_header(("Allow", allow.as_str()));
            }
            // Like the HTTP codec's own 4xx: the rest of such a request is not worth reading.
            ApiError::UriTooLong { .. }
            | ApiError::HeadersTooLarge(_)
            | ApiError::BodyTimeout { .. } => {
                resp.force_close();
            }
            _ => {}
        }
        match self {
            // A backing service down (the store, the log, the cache) or a conflict to redo:
            // the client retries the same command, with the same event id, shortly.
            ApiError::ProgramConflict(_) | ApiError::Unavailable(_) => {
                resp.insert_header(("Retry-After", "1"));
            }
            ApiError::RateLimited { retry_after, .. } => {
                resp.insert_header(("Retry-After", retry_after_secs(*retry_after).to_string()));
            }
            _ => {}
        }
        resp.body(body.to_string())
    }
}

/// Whole seconds to wait (`Retry-After` takes no fraction), at least 1.
fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Maps query string failures to problems.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &HttpRequest,
) -> actix_web::Error {
    ApiError::Invalid(format!("query string: {err}")).into()
}

/// Maps path failures to problems.
pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::Invalid(format!("path: {err}")).into()
}
