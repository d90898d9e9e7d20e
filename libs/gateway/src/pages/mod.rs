//! The headquarters' dashboard as a web page (`/dashboard`), outside API v1: a sign-in form
//! that takes the franchise's HQ key and keeps it in a `Secure; HttpOnly; SameSite=Strict`
//! cookie scoped to `/dashboard` (never in a URL, never readable by script), then one page
//! that reads the same JSON and CSV as the API (`routes::dashboard`) through that cookie.
//!
//! Everything the page needs is compiled into the binary: its HTML, script and style, and the
//! charting library (uPlot, MIT, vendored under `libs/gateway/assets/vendor/uplot/`). Nothing is
//! fetched from another origin: the Content-Security-Policy allows this origin only, and no
//! inline script.

pub mod join;
pub mod member;
mod mydata;
pub mod optout;
mod preferences;
pub mod signin;
mod wallet;

use std::sync::LazyLock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse};
use data_encoding::HEXLOWER;
use loyalty_core::model::{Franchise, Role};
use loyalty_domain::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::problem::ApiError;
use crate::routes::dashboard::{csv_response, json_response, query_of, DashboardParams};
use crate::state::Gateway;

/// The session cookie: the HQ key itself, for this path only.
const COOKIE: &str = "loyalty_dashboard";
/// How long a session lasts (seconds) before the key must be entered again.
const SESSION_SECONDS: u32 = 8 * 3600;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

const SIGN_IN: &str = include_str!("templates/sign_in.html");
const DASHBOARD: &str = include_str!("templates/dashboard.html");

/// A static file of the page, served with its content hash as ETag.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    hash: String,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    let raw: [(&str, &str, &[u8]); 6] = [
        (
            "dashboard.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/dashboard.js"),
        ),
        (
            "dashboard.css",
            "text/css; charset=utf-8",
            include_bytes!("../../assets/dashboard.css"),
        ),
        (
            "favicon.svg",
            "image/svg+xml",
            include_bytes!("../../assets/favicon.svg"),
        ),
        (
            "vendor/uplot/uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/vendor/uplot/uPlot.iife.min.js"),
        ),
        (
            "vendor/uplot/uPlot.min.css",
            "text/css; charset=utf-8",
            include_bytes!("../../assets/vendor/uplot/uPlot.min.css"),
        ),
        (
            "vendor/uplot/LICENSE",
            "text/plain; charset=utf-8",
            include_bytes!("../../assets/vendor/uplot/LICENSE"),
        ),
    ];
    raw.into_iter()
        .map(|(path, content_type, body)| Asset {
            path,
            content_type,
            body,
            hash: HEXLOWER.encode(&Sha256::digest(body)[..10]),
        })
        .collect()
});

fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The URL of an asset, versioned by its content (so it can be cached for a year).
fn asset_url(path: &str) -> String {
    let hash = asset(path).map(|a| a.hash.as_str()).unwrap_or("0");
    format!("/dashboard/assets/{path}?v={hash}")
}

/// Registers the page's routes (outside `/v1`: they are not API operations), as
/// [`crate::routing::endpoint`]s (HEAD where GET, 405 for other methods).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routing::endpoint;
    cfg.service(
        web::scope("/dashboard")
            .wrap(from_fn(security_headers))
            .service(endpoint("").get(page))
            .service(endpoint("/").get(to_page))
            .service(endpoint("/session").post(sign_in))
            .service(endpoint("/session/end").post(sign_out))
            .service(endpoint("/data").get(data))
            .service(endpoint("/export.csv").get(export))
            .service(endpoint("/assets/{path:.+}").get(static_asset))
            .service(endpoint("/stores/{sid}/poster").get(member::dashboard_poster)),
    )
    .configure(member::configure)
    .configure(optout::configure);
}

/// The page's security headers, on every answer under `/dashboard` (errors included), and
/// under the members' pages ([`member`]). A page that sets its own Content-Security-Policy
/// (a stricter one, with the hash of its inline style) keeps it.
pub(crate) async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(res)
}

/// The key in the request's session cookie, if any.
fn session_key(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// The franchise of the session's HQ key: 401 without a session, or for a key that is not
/// (or no longer) a valid HQ key.
async fn session(gw: &Gateway, req: &HttpRequest) -> Result<std::sync::Arc<Franchise>, ApiError> {
    let key = session_key(req).ok_or(ApiError::Unauthorized)?;
    let p = gw.principal_of_key(&key).await?;
    if !p.role.reads_hq() {
        return Err(ApiError::Unauthorized);
    }
    gw.franchise_of(&p).await
}

/// Whether a POST comes from a page of this origin (against cross-site request forgery, on
/// top of the cookie's `SameSite=Strict`): `Sec-Fetch-Site`, when the browser sends it, must
/// say `same-origin`, and `Origin`, when it names one, must be this host. Browsers send
/// `Origin: null` under `Referrer-Policy: no-referrer`, hence `Sec-Fetch-Site`; a request
/// with neither signal is refused.
fn same_origin(req: &HttpRequest) -> bool {
    let text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fetch_site = text("sec-fetch-site");
    if fetch_site.as_deref().is_some_and(|s| s != "same-origin") {
        return false;
    }
    match text("origin").filter(|o| o != "null") {
        Some(origin) => {
            let info = req.connection_info();
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(info.host()))
        }
        None => fetch_site.is_some(),
    }
}

fn cross_origin() -> HttpResponse {
    HttpResponse::Forbidden()
        .content_type("text/plain; charset=utf-8")
        .body("refused: this form may only be sent from the dashboard's own page\n")
}

fn set_cookie(value: &str, max_age: u32) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!(
            "{COOKIE}={value}; Path=/dashboard; Max-Age={max_age}; Secure; HttpOnly; \
             SameSite=Strict"
        ),
    )
}

fn see_other() -> actix_web::HttpResponseBuilder {
    let mut r = HttpResponse::SeeOther();
    r.insert_header((header::LOCATION, "/dashboard"));
    r
}

/// Escapes text for HTML content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills `{{name}}` slots; the values are already escaped.
fn render(template: &str, slots: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in slots {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// The sign-in form, with a message (already escaped) when a key was refused.
fn sign_in_form(req: &HttpRequest, status: StatusCode, message: &str) -> HttpResponse {
    let info = req.connection_info();
    let host = info.host().rsplit_once(':').map_or(info.host(), |(h, _)| h);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    // The cookie is Secure: browsers keep it over HTTPS, and over plain HTTP on loopback only.
    let hint = if info.scheme() == "https" || loopback {
        String::new()
    } else {
        "<p class=\"hint\">This page is served over plain HTTP: browsers keep the session \
         cookie only over HTTPS (or on localhost). Put the gateway behind TLS.</p>"
            .to_owned()
    };
    let message = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" role=\"alert\" id=\"sign-in-error\">{message}</p>")
    };
    html(
        status,
        render(
            SIGN_IN,
            &[
                ("css", &asset_url("dashboard.css")),
                ("favicon", &asset_url("favicon.svg")),
                ("message", &message),
                ("hint", &hint),
            ],
        ),
    )
}

/// `GET /dashboard/`: to the page.
async fn to_page() -> HttpResponse {
    see_other().finish()
}

/// `GET /dashboard`: the dashboard of the session's franchise, or the sign-in form.
async fn page(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    let f = match session(&gw, &req).await {
        Ok(f) => f,
        Err(ApiError::Unauthorized) => {
            let mut r = sign_in_form(&req, StatusCode::OK, "");
            if session_key(&req).is_some() {
                // A stale or revoked key: forget it.
                let (name, value) = set_cookie("", 0);
                r.headers_mut()
                    .insert(name, HeaderValue::from_str(&value).expect("ascii"));
            }
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let program = gw.program(&f).await?;
    let mut stores = gw.store.stores_of(&f.id).await?;
    stores.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.as_str().cmp(b.id.as_str())));
    let options: String = stores
        .iter()
        .map(|s| {
            format!(
                "<option value=\"{}\">{}</option>",
                escape(s.id.as_str()),
                escape(&s.name)
            )
        })
        .collect();
    let posters: String = stores
        .iter()
        .map(|s| {
            let url = format!("/dashboard/stores/{}/poster", escape(s.id.as_str()));
            format!(
                "<li data-store-id=\"{}\">{}: <a href=\"{url}\">A5</a> · \
                 <a href=\"{url}?size=a6\">A6</a> · <a href=\"{url}?lang=en\">English</a></li>",
                escape(s.id.as_str()),
                escape(&s.name)
            )
        })
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let today = program.time_zone.day(Timestamp(now_ms));
    // What the script needs that the JSON does not say; `<` escaped so that no value can end
    // the (non-executed) JSON block.
    let rewards: serde_json::Map<String, serde_json::Value> = program
        .rewards
        .iter()
        .map(|r| (r.id.as_str().to_owned(), r.name.clone().into()))
        .collect();
    let config = serde_json::json!({
        "currency": program.currency.as_str(),
        "today": today.iso(),
        "time_zone": program.time_zone.name(),
        "rewards": rewards,
    })
    .to_string()
    .replace('<', "\\u003c");
    Ok(html(
        StatusCode::OK,
        render(
            DASHBOARD,
            &[
                ("css", &asset_url("dashboard.css")),
                ("uplot_css", &asset_url("vendor/uplot/uPlot.min.css")),
                ("uplot_js", &asset_url("vendor/uplot/uPlot.iife.min.js")),
                ("js", &asset_url("dashboard.js")),
                ("favicon", &asset_url("favicon.svg")),
                ("franchise", &escape(&f.name)),
                ("stores", &options),
                ("posters", &posters),
                ("config", &config),
            ],
        ),
    ))
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
}

/// `POST /dashboard/session`: an HQ key opens a session (303 to the page); anything else is
/// the form again with why.
async fn sign_in(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    form: Result<web::Form<SignIn>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    if !same_origin(&req) {
        return Ok(cross_origin());
    }
    let key = form.map(|f| f.into_inner().key).unwrap_or_default();
    let key = key.trim();
    // A key is `lk_<role>_<base32>`; anything that could not sit in a cookie is no key.
    let cookie_safe = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let refused = |status, message: &str| Ok(sign_in_form(&req, status, message));
    if key.is_empty() {
        return refused(StatusCode::UNAUTHORIZED, "Enter your franchise's HQ key.");
    }
    if !cookie_safe {
        return refused(StatusCode::UNAUTHORIZED, "This key is not valid.");
    }
    let p = match gw.principal_of_key(key).await {
        Ok(p) => p,
        Err(ApiError::Unauthorized) => {
            return refused(StatusCode::UNAUTHORIZED, "This key is not valid.")
        }
        Err(e) => return Err(e),
    };
    match p.role {
        Role::Hq | Role::HqReadOnly => {
            gw.franchise_of(&p).await?;
            Ok(see_other()
                .insert_header(set_cookie(key, SESSION_SECONDS))
                .finish())
        }
        Role::Store => refused(
            StatusCode::FORBIDDEN,
            "This is a store key: the dashboard opens with the franchise's HQ key.",
        ),
        Role::Admin => refused(
            StatusCode::FORBIDDEN,
            "This is the platform admin key: the dashboard opens with a franchise's HQ key.",
        ),
    }
}

/// `POST /dashboard/session/end`: forgets the session.
async fn sign_out(req: HttpRequest) -> HttpResponse {
    if !same_origin(&req) {
        return cross_origin();
    }
    see_other().insert_header(set_cookie("", 0)).finish()
}

/// `GET /dashboard/data`: the API's JSON (`GET /v1/franchises/{fid}/dashboard`), by session.
async fn data(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    params: Result<web::Query<DashboardParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let f = session(&gw, &req).await?;
    let (program, q) = query_of(&gw, &f, params).await?;
    json_response(&gw, &f, &program, &q).await
}

/// `GET /dashboard/export.csv`: the API's CSV (`dashboard.csv`), by session.
async fn export(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    params: Result<web::Query<DashboardParams>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let f = session(&gw, &req).await?;
    let (_, q) = query_of(&gw, &f, params).await?;
    csv_response(&gw, &f, &q).await
}

/// `GET /dashboard/assets/{path}`: a compiled-in file, cached for a year (its URL carries its
/// content hash) and revalidated by ETag.
async fn static_asset(req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let a = asset(&path).ok_or_else(|| ApiError::NotFound("no such asset".into()))?;
    let etag = format!("\"{}\"", a.hash);
    let cache = ("Cache-Control", "public, max-age=31536000, immutable");
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header(cache)
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type(a.content_type)
        .insert_header((header::ETAG, etag))
        .insert_header(cache)
        .body(a.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn every_template_slot_names_an_asset_that_exists() {
        for a in ASSETS.iter() {
            assert_eq!(a.hash.len(), 20, "{}", a.path);
        }
        for p in [
            "dashboard.js",
            "dashboard.css",
            "vendor/uplot/uPlot.iife.min.js",
            "vendor/uplot/uPlot.min.css",
        ] {
            assert!(asset(p).is_some(), "{p}");
            assert!(asset_url(p).ends_with(&asset(p).unwrap().hash));
        }
        assert!(!DASHBOARD.contains("<script>"), "no inline script");
        assert!(!SIGN_IN.contains("<script"), "the form needs no script");
    }
}
