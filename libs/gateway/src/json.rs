//! The one way a request's JSON body is read: [`JsonObject`].
//!
//! serde's derived `Deserialize` of a struct takes a JSON array as its fields in order, so
//! `["e-1","m…",null,null,100,"EUR",null]` used to be a purchase; and reading straight into the
//! type reports the first problem it meets, so `{"a":}` was answered `unknown field` (422)
//! rather than as the syntax error it is. Here a body is read in two passes: the whole text is
//! checked as JSON first (a syntax error is 400 `malformed-json`, whatever its fields), then it
//! must be an object (anything else is 422), and only then is it read into the handler's type
//! (unknown, missing, duplicate or out-of-bounds fields are 422, naming the field). Nested
//! objects are the types' own business (the program's are checked by the domain,
//! `loyalty_domain::object`).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use bytes::BytesMut;
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::problem::ApiError;

/// The largest body [`JsonObject`] reads, as configured (`LOYALTY_MAX_BODY_BYTES`); registered
/// as app data by [`crate::configure`].
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// Used when no [`BodyLimit`] is registered (the configuration's default).
const DEFAULT_LIMIT: usize = 16 * 1024;

/// A request body that is a JSON object, read into `T`. The extractor of every handler with a
/// JSON body.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<T> JsonObject<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for JsonObject<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonObject<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<BodyLimit>().map_or(DEFAULT_LIMIT, |l| l.0);
        let checked = check_head(req, limit);
        // Compressed bodies (`Content-Encoding`) are inflated, as by actix's own extractors.
        let mut stream = actix_web::dev::Decompress::from_headers(payload.take(), req.headers());
        Box::pin(async move {
            checked?;
            let mut buf = BytesMut::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| ApiError::MalformedJson(e.to_string()))?;
                if buf.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit }.into());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(JsonObject(parse(&buf)?))
        })
    }
}

/// The content type must be JSON (`application/json`, or `+json`), and a declared length must
/// be within `limit`.
fn check_head(req: &HttpRequest, limit: usize) -> Result<(), ApiError> {
    let json = match req.mime_type() {
        Ok(Some(m)) => m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"),
        _ => false,
    };
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    if let Some(v) = req.headers().get(header::CONTENT_LENGTH) {
        match v.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > limit as u64 => return Err(ApiError::PayloadTooLarge { limit }),
            Some(_) => {}
            None => return Err(ApiError::MalformedJson("invalid Content-Length".into())),
        }
    }
    Ok(())
}

/// Reads `body` as a JSON object into `T`: 400 for a syntax error anywhere, 422 for a value
/// that is not an object or fields `T` refuses.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<IgnoredAny>(body)
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let what = match first {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b'n') => "null",
            Some(b't' | b'f') => "a boolean",
            _ => "a number",
        };
        return Err(ApiError::Invalid(format!(
            "the request body must be a JSON object, not {what}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        a: u32,
        b: Option<String>,
    }

    fn code(body: &str) -> &'static str {
        match parse::<Body>(body.as_bytes()) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn bodies_are_objects_and_syntax_comes_first() {
        assert_eq!(code(r#"{"a": 1}"#), "ok");
        assert_eq!(code(" \n{\"a\": 1, \"b\": \"x\"}\n"), "ok");
        for bad in [
            r#"{"a":}"#,
            r#"{"x": 1,}"#,
            r#"{"a": 1"#,
            "",
            " ",
            "{",
            r#"{"a":1} x"#,
        ] {
            assert_eq!(code(bad), "malformed-json", "{bad:?}");
        }
        for wrong in [
            r#"[1, "x"]"#,
            "1",
            r#""s""#,
            "null",
            "true",
            r#"{"a": -1}"#,
            r#"{"a": 1, "c": 2}"#,
            r#"{"a": 1, "a": 2}"#,
        ] {
            assert_eq!(code(wrong), "invalid-request", "{wrong:?}");
        }
        let e = parse::<Body>(b"[1]").unwrap_err().to_string();
        assert!(e.contains("must be a JSON object, not an array"), "{e}");
    }
}
