//! The one way a request's JSON body is read: [`JsonObject`].
//!
//! serde's derived `Deserialize` of a struct takes a JSON array as its fields in order, so
//! `["e-1","m…",null,null,100,"EUR",null]` used to be a purchase; and reading straight into the
//! type reports the first problem it meets, so `{"a":}` was answered `unknown field` (422)
//! rather than as the syntax error it is. Here a body is read in two passes: the whole text is
//! checked as JSON first (a syntax error is 400 `malformed-json`, whatever its fields), then it
//! must be an object (anything else is 422), and only then is it read into the handler's type
//! (unknown, missing, duplicate or out-of-bounds fields are 422, naming the field). A number
//! with a zero fraction (`1250.0`, `1.25e3`) is the integer it equals, as in JSON Schema
//! ([`integral_numbers`]). Nested
//! objects are the types' own business (the program's are checked by the domain,
//! `loyalty_domain::object`).

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use bytes::BytesMut;
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::problem::ApiError;

/// How much of a body [`JsonObject`] reads, and for how long, as configured
/// (`LOYALTY_MAX_BODY_BYTES`, `LOYALTY_BODY_TIMEOUT_MS`); registered as app data by
/// [`crate::configure`].
///
/// The timeout bounds the whole body, from the handler's first read to its last byte, not the
/// gap between two chunks: a client that trickles one byte a second would never trip an idle
/// timer, and would hold a connection (and a worker's attention) for as long as it likes. The
/// head of a request has its own bound, actix's client request timeout.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit {
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl Default for BodyLimit {
    /// The configuration's defaults.
    fn default() -> Self {
        BodyLimit {
            max_bytes: 16 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

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
        let limits = req.app_data::<BodyLimit>().copied().unwrap_or_default();
        let checked = check_head(req, limits.max_bytes);
        // Compressed bodies (`Content-Encoding`) are inflated, as by actix's own extractors.
        let stream = actix_web::dev::Decompress::from_headers(payload.take(), req.headers());
        Box::pin(async move {
            checked?;
            let body =
                match tokio::time::timeout(limits.timeout, read(stream, limits.max_bytes)).await {
                    Ok(body) => body?,
                    Err(_) => {
                        crate::record_body_timeout();
                        return Err(ApiError::BodyTimeout {
                            ms: limits.timeout.as_millis() as u64,
                        }
                        .into());
                    }
                };
            Ok(JsonObject(parse(&body)?))
        })
    }
}

/// The whole body, at most `limit` bytes of it (after decompression).
async fn read(
    mut stream: impl futures::Stream<Item = Result<bytes::Bytes, actix_web::error::PayloadError>>
        + Unpin,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
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
    // JSON text is UTF-8 (RFC 8259 §8.1), and the syntax pass below skips over strings without
    // looking at their bytes: found by fuzzing (fuzz/artifacts/http_bodies), a name with bytes
    // that are not UTF-8 used to be answered 422 by the typed pass instead of 400.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::MalformedJson(format!(
            "the body is not UTF-8 (byte {})",
            e.valid_up_to()
        )));
    }
    serde_json::from_slice::<IgnoredAny>(body)
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    // The syntax pass does not decode strings either: an escape that is no character (a lone
    // surrogate, `"\udaa0"`: found by fuzzing) is bad text wherever it stands, whatever the
    // typed pass would meet first.
    if let Some(at) = lone_surrogate(body) {
        return Err(ApiError::MalformedJson(format!(
            "a \\u escape at byte {at} is a lone surrogate, not a character"
        )));
    }
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
    let body = integral_numbers(body);
    serde_json::from_slice(&body).map_err(|e| ApiError::Invalid(e.to_string()))
}

/// Where the first `\\uXXXX` escape of a surrogate that is not half of a pair stands in `body`
/// (valid JSON): a high surrogate (D800 to DBFF) must be followed at once by the escape of a
/// low one (DC00 to DFFF), and a low one must follow a high one.
fn lone_surrogate(body: &[u8]) -> Option<usize> {
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(body.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = 0;
    let mut in_string = false;
    while i < body.len() {
        match (in_string, body[i]) {
            (false, b'"') => in_string = true,
            (true, b'"') => in_string = false,
            (true, b'\\') if body.get(i + 1) == Some(&b'u') => {
                let unit = hex(i + 2)?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (body.get(i + 6) == Some(&b'\\')
                            && body.get(i + 7) == Some(&b'u'))
                        .then(|| hex(i + 8))
                        .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Some(i);
                        }
                        i += 12;
                        continue;
                    }
                    0xDC00..=0xDFFF => return Some(i),
                    _ => {
                        i += 6;
                        continue;
                    }
                }
            }
            (true, b'\\') => {
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The most digits an integral number written with a fraction or an exponent is rewritten to:
/// beyond that it is above every integer field's maximum anyway (and refused as a float).
const MAX_INTEGRAL_DIGITS: usize = 40;

/// `body` (valid JSON) with every number that is an integer but not written as one (`1250.0`,
/// `1.25e3`, `-0.0`) rewritten as an integer literal (`1250`), exactly, from its decimal text.
///
/// In JSON's data model (RFC 8259 §6, and JSON Schema's `integer`: "a number with a zero
/// fractional part") `1250.0` is the integer 1250, so the OpenAPI document cannot tell it from
/// `1250`; serde reads it as a float, which an integer field refuses. A number that is not an
/// integer (`12.5`, `1e-3`) is left as it is, and refused by an integer field as before. Strings
/// are copied untouched. The body is copied only when something is rewritten.
fn integral_numbers(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < body.len()
                    && matches!(body[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let token = &body[start..i];
                if token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    if let Some(int) = integral(token) {
                        let o = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
                        o.extend_from_slice(&body[copied..start]);
                        o.extend_from_slice(int.as_bytes());
                        copied = i;
                    }
                }
            }
            _ => i += 1,
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(body),
        Some(mut o) => {
            o.extend_from_slice(&body[copied.min(body.len())..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// The integer literal of the JSON number `token` if it is an integer of at most
/// [`MAX_INTEGRAL_DIGITS`] digits.
fn integral(token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, "0"),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let exp_negative = exponent.starts_with('-');
    let exp_digits = exponent.trim_start_matches(['-', '+']);
    if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all_zero = digits.iter().all(|&d| d == b'0');
    // Where the decimal point falls in `digits` once the exponent is applied.
    let limit = (MAX_INTEGRAL_DIGITS + digits.len()) as i64;
    let exp = exp_digits.bytes().try_fold(0i64, |acc, d| {
        let next = acc * 10 + i64::from(d - b'0');
        (next <= limit).then_some(next)
    });
    let point = match (exp, exp_negative) {
        (Some(e), false) => int.len() as i64 + e,
        (Some(e), true) => int.len() as i64 - e,
        (None, _) if all_zero => 0,
        (None, _) => return None,
    };
    let mut integer: Vec<u8> = if point <= 0 {
        Vec::new()
    } else if point as usize >= digits.len() {
        let mut v = digits.clone();
        v.resize(point as usize, b'0');
        v
    } else {
        digits[..point as usize].to_vec()
    };
    let fraction = if point <= 0 {
        &digits[..]
    } else {
        &digits[(point as usize).min(digits.len())..]
    };
    if fraction.iter().any(|&d| d != b'0') {
        return None;
    }
    let leading = integer.iter().take_while(|&&d| d == b'0').count();
    integer.drain(..leading);
    if integer.len() > MAX_INTEGRAL_DIGITS {
        return None;
    }
    if integer.is_empty() {
        return Some("0".to_owned());
    }
    let mut s = String::with_capacity(integer.len() + 1);
    if negative {
        s.push('-');
    }
    s.push_str(std::str::from_utf8(&integer).ok()?);
    Some(s)
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
        // A pair is one character; an escaped backslash before `u` is no escape.
        assert_eq!(code(r#"{"a": 1, "b": "\ud83d\ude00"}"#), "ok");
        assert_eq!(code(r#"{"a": 1, "b": "\\udaa0"}"#), "ok");
        // JSON, but beyond what the server takes: refused as values.
        assert_eq!(code(r#"{"a": 1e400}"#), "invalid-request");
        let deep = format!("{{\"b\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(code(&deep), "invalid-request");
    }

    #[test]
    fn text_that_is_not_unicode_is_malformed_even_inside_a_string() {
        for body in [
            &b"{\"b\": \"L\xc3\xa9a\x9e\"}"[..],
            b"{\"a\": 1}\xff",
            // Escapes of lone surrogates: no character, whether in a value or a key, and
            // wherever they stand (here after a field the typed pass refuses first).
            b"{\"b\": \"x\\udaa0\"}",
            b"{\"ph\\udaa0y\": \"0\"}",
            b"{\"c\": 1, \"b\": \"\\ude0a\"}",
            b"{\"b\": \"\\ud83d\\u0041\"}",
            b"\xef\xbb",
        ] {
            let r = parse::<Body>(body);
            assert!(
                matches!(r, Err(ApiError::MalformedJson(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn integral_numbers_are_integers_however_written() {
        let int = |t: &str| integral(t.as_bytes());
        for (token, want) in [
            ("1250.0", "1250"),
            ("1.25e3", "1250"),
            ("1.25E+3", "1250"),
            ("125000e-2", "1250"),
            ("0.0", "0"),
            ("-0.0", "0"),
            ("-0e5", "0"),
            ("0e-99999999999999999999", "0"),
            ("-12.000", "-12"),
            ("1e12", "1000000000000"),
            ("1.5e18", "1500000000000000000"),
            ("9223372036854775808.0", "9223372036854775808"),
        ] {
            assert_eq!(int(token).as_deref(), Some(want), "{token}");
        }
        for token in [
            "12.5",
            "1e-3",
            "1.0000000000000000001",
            "1e41",
            "1e99999999999999999999",
        ] {
            assert_eq!(int(token), None, "{token}");
        }
        // Strings are left alone; only what changes is copied.
        let body = br#"{"a": 2.0, "b": "3.0", "c": "\"4.0", "d": [5e0, 6.5]}"#;
        assert_eq!(
            std::str::from_utf8(&integral_numbers(body)).unwrap(),
            r#"{"a": 2, "b": "3.0", "c": "\"4.0", "d": [5, 6.5]}"#
        );
        assert!(matches!(
            integral_numbers(br#"{"a": 1, "b": 2.5}"#),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(code(r#"{"a": 7.0}"#), "ok");
        assert_eq!(code(r#"{"a": 7e0, "b": "x"}"#), "ok");
        assert_eq!(code(r#"{"a": 7.5}"#), "invalid-request");
        assert_eq!(code(r#"{"a": -1.0}"#), "invalid-request");
    }
}
