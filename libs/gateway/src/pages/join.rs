//! The self-enrolment page a store's enrolment QR code opens (`/join/{sid}/{token}`, issue 13):
//! phone number, first name, optional birthday, optional e-mail address and consent per
//! channel (consent to e-mail needs the address); the phone is confirmed
//! by a one-time code sent through the [`Notifier`] port, and the member, enrolled exactly as
//! at the till ([`crate::routes::members::enrol_member`]: the same phone is the same member),
//! lands on their card page through a fresh signed card link (303).
//!
//! Server-rendered, no script, the card page's strict Content-Security-Policy, French and
//! English ([`Lang`]).
//!
//! - `GET /join/{sid}/{token}`: the form (404 for a forged token or an unknown store; 503 when
//!   this process has no notifier, so that no code can be sent).
//! - `POST /join/{sid}/{token}`: sends a 6-digit code (kept as a keyed hash, valid
//!   [`SelfEnrolment::code_ttl`], single use, at most [`MAX_ATTEMPTS`] tries) and answers the
//!   second form. The answer is the same whether the phone is a member or not: nothing is
//!   looked up before the code is confirmed.
//! - `POST /join/{sid}/{token}/code`: checks the code; on success 303 to the card.
//!
//! Abuse controls, on the gateway's rate limiter (the limiter of
//! [`crate::limits::LookupLimits`], in Redis when gateways share it): code requests per phone ([`CODES_PER_PHONE`]) and per client
//! address ([`CODES_PER_ADDRESS`]), code tries per address ([`TRIES_PER_ADDRESS`]), each a 429
//! page with `Retry-After`. Each form carries an anti-forgery token bound to the store and its
//! time of issue ([`identity::enrolment_form_token`]); a post a browser marks cross-site is
//! refused.
//!
//! Pending codes live behind the [`PendingCodes`] port, keyed by the page's random challenge id
//! and bound to the franchise and store: in the process for `loyalty dev`, in Redis for the
//! distributed modes, so that a code sent by one gateway is confirmed through any other behind
//! the same address (no session affinity). They are held as an HMAC under the franchise's
//! secret ([`identity::one_time_code_hash`]), never in clear; the profile typed on the page
//! waits with them (for the code's lifetime only) and phones are logged masked, if at all. The
//! consents given on the page go into the member's profile with the enrolment (durable, in the
//! member's export, erased with the profile).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::identity;
use loyalty_core::input;
use loyalty_core::metrics::metrics;
use loyalty_core::model::{Franchise, Principal, Role, Store};
use loyalty_core::notify::{mask_phone, Notifier};
use loyalty_core::pending_codes::{PendingCode, PendingCodes, Put, Verdict};
use loyalty_core::rate_limit::RateLimit;
use loyalty_domain::{Consent, Profile};
use serde::{Deserialize, Serialize};

use super::escape;
use super::member::{
    card_link, enrolment_store, error_page, failure_page, now_secs, page, promises, Lang, CARD_CSS,
    DEFAULT_LINK_DAYS,
};
use crate::limits::{address_bucket, LookupLimits};
use crate::state::Gateway;

/// Tries of one code.
pub const MAX_ATTEMPTS: u32 = 5;
/// Codes sent to one phone: 3 at once, then one a minute.
pub const CODES_PER_PHONE: RateLimit = RateLimit {
    per_minute: 1,
    burst: 3,
};
/// Codes asked for from one client address: 10 at once, then 10 a minute.
pub const CODES_PER_ADDRESS: RateLimit = RateLimit {
    per_minute: 10,
    burst: 10,
};
/// Codes tried from one client address: 20 at once, then 10 a minute.
pub const TRIES_PER_ADDRESS: RateLimit = RateLimit {
    per_minute: 10,
    burst: 20,
};
/// How long a form's anti-forgery token is accepted (seconds).
pub(super) const FORM_MAX_AGE: i64 = 3600;
/// Pending codes held at most by the service's adapters (past it, expired ones are dropped;
/// then new ones refused with a 429 page). An entry is well under 1 kB: about 100 MB at most.
pub const MAX_PENDING: usize = 100_000;

/// The extra style of the forms (on top of the card's).
const FORM_CSS: &str = "form{display:grid;gap:.8rem;margin:1rem 0}\
label{display:grid;gap:.25rem;font-weight:600}\
input[type=tel],input[type=text],input[type=date],input[type=email]{font:inherit;padding:.6rem;border:1px solid #bbb;border-radius:.5rem}\
input[name=code]{font-size:1.6rem;letter-spacing:.3em;text-align:center}\
fieldset{border:1px solid #ddd;border-radius:.5rem}\
.check{display:flex;gap:.5rem;font-weight:400;align-items:center}\
button{font:inherit;font-weight:700;padding:.8rem;border:0;border-radius:.5rem;background:var(--brand,#6b3e26);color:#fff}\
.notice{background:#fff6d5;padding:.6rem;border-radius:.5rem}\
.error{color:#a40000}";

/// What waits with a code (the payload of its [`PendingCode`]): the profile typed on the
/// page, enrolled once the code is confirmed.
#[derive(Serialize, Deserialize)]
struct Waiting {
    profile: Profile,
}

/// The self-enrolment page's state, registered as app data by the service.
pub struct SelfEnrolment {
    pub(super) notifier: Option<Arc<dyn Notifier>>,
    /// How long a code is valid.
    pub code_ttl: Duration,
    pub(super) codes: Arc<dyn PendingCodes>,
}

impl SelfEnrolment {
    /// `notifier`: `None` where no adapter is configured (the page then says codes cannot be
    /// sent, 503). `codes`: where pending codes wait (shared by the gateways in distributed
    /// modes).
    pub fn new(
        notifier: Option<Arc<dyn Notifier>>,
        code_ttl: Duration,
        codes: Arc<dyn PendingCodes>,
    ) -> SelfEnrolment {
        SelfEnrolment {
            notifier,
            code_ttl,
            codes,
        }
    }
}

/// The scope a code is bound to: its franchise and store.
fn scope_of(f: &Franchise, store: &Store) -> String {
    format!("{}/{}", f.id, store.id)
}

/// A fresh 6-digit code and a challenge id (both from the OS generator, through v4 UUIDs).
pub(super) fn new_code() -> (String, String) {
    let r = uuid::Uuid::new_v4();
    let n = u32::from_le_bytes(r.as_bytes()[..4].try_into().unwrap_or_default()) % 1_000_000;
    (format!("{n:06}"), uuid::Uuid::new_v4().simple().to_string())
}

fn count(result: &str) {
    metrics().enrolment_codes.with_label_values(&[result]).inc();
}

/// A pending codes adapter failed: counted (by the page's `count`), logged (no phone), and
/// the page says so (503).
pub(super) fn codes_failed(
    lang: Lang,
    se: &SelfEnrolment,
    e: loyalty_core::Error,
    count: fn(&str),
) -> HttpResponse {
    count("store_unavailable");
    tracing::warn!(error = %e, adapter = se.codes.name(), "pending one-time codes unavailable");
    failure_page(lang, &e.into())
}

/// Holds a new one-time code bound to `scope`, `payload` waiting with it, then sends it to
/// `send_to` through `notifier` (`None`: held but never sent, counted `not_member`, so that the
/// card sign-in page answers a stranger as it answers a member). What this page and the card
/// sign-in page share; each result is counted by the page's `count`. Returns the code's
/// challenge, or the page to answer.
#[allow(clippy::too_many_arguments)]
pub(super) async fn hold_and_send(
    se: &SelfEnrolment,
    notifier: &dyn Notifier,
    franchise_secret: &str,
    scope: String,
    payload: Vec<u8>,
    send_to: Option<&loyalty_domain::Phone>,
    lang: Lang,
    count: fn(&str),
) -> Result<String, HttpResponse> {
    let (code, challenge) = new_code();
    let pending = PendingCode {
        scope,
        code_hash: identity::one_time_code_hash(franchise_secret, &challenge, &code),
        payload,
        ttl: se.code_ttl,
        max_attempts: MAX_ATTEMPTS,
    };
    match se.codes.put(&challenge, pending).await {
        Ok(Put::Stored) => {}
        Ok(Put::Full) => {
            count("rate_limited");
            return Err(too_many(lang, Duration::from_secs(60), WAIT_CODES));
        }
        Err(e) => return Err(codes_failed(lang, se, e, count)),
    }
    let Some(phone) = send_to else {
        count("not_member");
        return Ok(challenge);
    };
    if let Err(e) = notifier.send_code(phone, &code, lang.code()).await {
        if let Err(e) = se.codes.remove(&challenge).await {
            tracing::warn!(error = %e, "an unsent one-time code could not be forgotten");
        }
        count("send_failed");
        tracing::warn!(error = %e, notifier = notifier.name(), "a one-time code could not be sent");
        return Err(unavailable(lang));
    }
    count("sent");
    Ok(challenge)
}

// ---------------------------------------------------------------------------------------------
// Pages

/// The style of the pages with a form (this one, the opt-out and card consent forms).
pub(super) fn css() -> String {
    format!("{CARD_CSS}{FORM_CSS}")
}

fn unknown(lang: Lang) -> HttpResponse {
    error_page(
        StatusCode::NOT_FOUND,
        lang,
        lang.pick("Code inconnu", "Unknown code"),
        lang.pick(
            "Ce code ne correspond à aucun magasin. Demandez en caisse pour rejoindre le \
             programme.",
            "This code matches no store. Ask at the till to join the program.",
        ),
    )
}

pub(super) fn unavailable(lang: Lang) -> HttpResponse {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        lang,
        lang.pick("Inscription indisponible", "Enrolment unavailable"),
        lang.pick(
            "Les codes de confirmation ne peuvent pas être envoyés pour le moment. Donnez \
             votre numéro en caisse pour rejoindre le programme.",
            "Confirmation codes cannot be sent right now. Give your phone number at the till \
             to join the program.",
        ),
    )
}

fn stale_form(lang: Lang) -> HttpResponse {
    error_page(
        StatusCode::FORBIDDEN,
        lang,
        lang.pick("Formulaire expiré", "Form expired"),
        lang.pick(
            "Ce formulaire a expiré ou ne vient pas de cette page. Scannez à nouveau le QR \
             code du magasin.",
            "This form has expired or did not come from this page. Scan the store's QR code \
             again.",
        ),
    )
}

pub(super) fn too_many(
    lang: Lang,
    retry_after: Duration,
    message: (&'static str, &'static str),
) -> HttpResponse {
    let mut r = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        lang,
        lang.pick("Trop de tentatives", "Too many attempts"),
        lang.pick(message.0, message.1),
    );
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub(super) const WAIT_CODES: (&str, &str) = (
    "Trop de codes ont été demandés. Réessayez dans quelques minutes.",
    "Too many codes were asked for. Please try again in a few minutes.",
);
pub(super) const WAIT_TRIES: (&str, &str) = (
    "Trop de codes erronés. Demandez un nouveau code dans quelques minutes.",
    "Too many wrong codes. Ask for a new code in a few minutes.",
);

fn gone(lang: Lang, action: &str) -> HttpResponse {
    let body = format!(
        "<main class=\"error\" id=\"error\" data-status=\"410\">\n<h1>{}</h1>\n<p>{}</p>\n\
         <p><a id=\"restart\" href=\"{}\">{}</a></p>\n</main>",
        lang.pick("Code expiré", "Code expired"),
        lang.pick(
            "Ce code a expiré ou a déjà servi.",
            "This code has expired or was already used."
        ),
        escape(&format!("{action}?lang={}", lang.code())),
        lang.pick("Recevoir un nouveau code", "Get a new code"),
    );
    page(
        StatusCode::GONE,
        lang,
        lang.pick("Code expiré", "Code expired"),
        &css(),
        &body,
    )
}

/// The values typed into the first form, shown again when one is refused.
#[derive(Default)]
struct Typed<'a> {
    phone: &'a str,
    name: &'a str,
    birthday: &'a str,
    consent: Consent,
    email: &'a str,
}

fn header_html(b: &mut String, f: &Franchise, store: &Store) {
    b.push_str(&format!(
        "<main class=\"card join\" id=\"join\" data-store=\"{}\">\n<header><p class=\"brand\" \
         id=\"franchise\">{}</p></header>\n<section>\n",
        escape(store.id.as_str()),
        escape(&f.name),
    ));
}

#[allow(clippy::too_many_arguments)]
fn start_form(
    status: StatusCode,
    f: &Franchise,
    store: &Store,
    program: &loyalty_domain::Program,
    lang: Lang,
    typed: &Typed<'_>,
    error: Option<&str>,
) -> HttpResponse {
    let mut b = String::with_capacity(4096);
    header_html(&mut b, f, store);
    b.push_str(&format!(
        "<h1>{}</h1>\n<ul class=\"promises\">",
        lang.pick("Rejoignez le programme", "Join the program")
    ));
    for p in promises(program, lang) {
        b.push_str(&format!("<li>{}</li>", escape(&p)));
    }
    b.push_str(&format!(
        "</ul>\n<p id=\"store\">{}</p>\n",
        escape(&store.name)
    ));
    if let Some(e) = error {
        b.push_str(&format!(
            "<p class=\"error\" role=\"alert\" id=\"form-error\">{}</p>\n",
            escape(e)
        ));
    }
    let csrf = identity::enrolment_form_token(&f.secret, &store.id, now_secs());
    let checked = |on: bool| if on { " checked" } else { "" };
    b.push_str(&format!(
        "<form id=\"enrol\" method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <input type=\"hidden\" name=\"lang\" value=\"{lang}\">\n\
         <label>{phone_l}<input type=\"tel\" name=\"phone\" id=\"phone\" required \
         autocomplete=\"tel\" placeholder=\"+33612345678\" value=\"{phone}\"></label>\n\
         <label>{name_l}<input type=\"text\" name=\"name\" id=\"name\" required \
         autocomplete=\"given-name\" maxlength=\"100\" value=\"{name}\"></label>\n\
         <label>{bday_l}<input type=\"date\" name=\"birthday\" id=\"birthday\" \
         value=\"{bday}\"></label>\n\
         <label>{email_addr_l}<input type=\"email\" name=\"email\" id=\"email\" \
         autocomplete=\"email\" maxlength=\"254\" value=\"{email_addr}\"></label>\n\
         <fieldset><legend>{consent_l}</legend>\n\
         <label class=\"check\"><input type=\"checkbox\" name=\"consent_sms\" id=\"consent-sms\" \
         value=\"yes\"{sms}> {sms_l}</label>\n\
         <label class=\"check\"><input type=\"checkbox\" name=\"consent_email\" \
         id=\"consent-email\" value=\"yes\"{email}> {email_l}</label>\n</fieldset>\n\
         <button type=\"submit\" id=\"send-code\">{send_l}</button>\n</form>\n\
         <p class=\"hint\">{hint}</p>\n</section>\n</main>",
        action = escape(&format!(
            "/join/{}/{}",
            store.id,
            identity::store_enrolment_token(&f.secret, &store.id)
        )),
        csrf = escape(&csrf),
        lang = lang.code(),
        phone_l = lang.pick("Numéro de téléphone", "Phone number"),
        phone = escape(typed.phone),
        name_l = lang.pick("Prénom", "First name"),
        name = escape(typed.name),
        bday_l = lang.pick("Date d’anniversaire (facultatif)", "Birthday (optional)"),
        bday = escape(typed.birthday),
        email_addr_l = lang.pick(
            "Adresse e-mail (facultatif, pour les offres par e-mail)",
            "E-mail address (optional, for offers by e-mail)"
        ),
        email_addr = escape(typed.email),
        consent_l = lang.pick("Je veux recevoir les offres", "Send me offers"),
        sms = checked(typed.consent.sms),
        sms_l = lang.pick("par SMS", "by SMS"),
        email = checked(typed.consent.email),
        email_l = lang.pick("par e-mail", "by e-mail"),
        send_l = lang.pick("Recevoir mon code", "Send me a code"),
        hint = lang.pick(
            "Nous vous envoyons un code à 6 chiffres par SMS pour confirmer votre numéro.",
            "We text you a 6-digit code to confirm your number."
        ),
    ));
    let title = format!("{} — {}", f.name, lang.pick("Inscription", "Join"));
    page(status, lang, &title, &css(), &b)
}

#[allow(clippy::too_many_arguments)]
fn code_form(
    status: StatusCode,
    se: &SelfEnrolment,
    f: &Franchise,
    store: &Store,
    lang: Lang,
    challenge: &str,
    phone: &str,
    error: Option<&str>,
) -> HttpResponse {
    let mut b = String::with_capacity(4096);
    header_html(&mut b, f, store);
    let token = identity::store_enrolment_token(&f.secret, &store.id);
    b.push_str(&format!(
        "<h1>{}</h1>\n<p id=\"sent-to\">{} <strong>{}</strong></p>\n",
        lang.pick("Entrez votre code", "Enter your code"),
        lang.pick(
            "Si ce numéro peut recevoir des SMS, un code à 6 chiffres vient d’être envoyé au",
            "If this number can receive texts, a 6-digit code was just sent to"
        ),
        escape(&mask_phone(phone)),
    ));
    if se.notifier.as_ref().is_some_and(|n| n.name() == "embedded") {
        b.push_str(&format!(
            "<p class=\"notice\" id=\"dev-notice\">{}</p>\n",
            lang.pick(
                "Mode développement\u{a0}: aucun SMS n’est envoyé, le code est écrit dans le \
                 journal de la plateforme.",
                "Development mode: no text is sent; the code is written in the platform's log."
            )
        ));
    }
    if let Some(e) = error {
        b.push_str(&format!(
            "<p class=\"error\" role=\"alert\" id=\"form-error\">{}</p>\n",
            escape(e)
        ));
    }
    let csrf = identity::enrolment_form_token(&f.secret, &store.id, now_secs());
    b.push_str(&format!(
        "<form id=\"confirm\" method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <input type=\"hidden\" name=\"challenge\" value=\"{challenge}\">\n\
         <input type=\"hidden\" name=\"lang\" value=\"{lang}\">\n\
         <label>{code_l}<input type=\"text\" name=\"code\" id=\"code\" required \
         inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" \
         autocomplete=\"one-time-code\"></label>\n\
         <button type=\"submit\" id=\"confirm-code\">{ok_l}</button>\n</form>\n\
         <p class=\"hint\">{hint}</p>\n</section>\n</main>",
        action = escape(&format!("/join/{}/{token}/code", store.id)),
        csrf = escape(&csrf),
        challenge = escape(challenge),
        lang = lang.code(),
        code_l = lang.pick("Code reçu", "Code received"),
        ok_l = lang.pick("Valider", "Confirm"),
        hint = lang.pick(
            "Le code est valable 10 minutes.",
            "The code is valid for 10 minutes."
        ),
    ));
    let title = format!("{} — {}", f.name, lang.pick("Code", "Code"));
    page(status, lang, &title, &css(), &b)
}

// ---------------------------------------------------------------------------------------------
// Handlers

#[derive(Debug, Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

pub(super) fn lang_of(req: &HttpRequest, asked: Option<&str>) -> Lang {
    let q = web::Query::<LangQuery>::from_query(req.query_string()).ok();
    Lang::of(
        req,
        asked.or_else(|| q.as_ref().and_then(|q| q.lang.as_deref())),
    )
}

/// A post the browser marks as coming from another site is refused (on top of the token).
pub(super) fn cross_site(req: &HttpRequest) -> bool {
    req.headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "cross-site")
}

/// Takes a token from `bucket` of the gateway's limiter (when the service registered one):
/// `Err(wait)` when it is empty. Refusals are counted in `loyalty_enrolment_codes_total`, not
/// in the phone lookups' `loyalty_rate_limited_total`; a limiter that cannot be reached lets
/// the request through (counted in `loyalty_rate_limit_errors_total`), as for lookups. The
/// card's sign-in page ([`super::signin`]) shares the buckets, counting its refusals with its
/// own `counted`.
pub(super) async fn take_counted(
    req: &HttpRequest,
    bucket: &str,
    limit: &RateLimit,
    counted: fn(&str),
) -> Result<(), Duration> {
    let Some(l) = req.app_data::<web::Data<LookupLimits>>() else {
        return Ok(());
    };
    match l.limiter.take(bucket, limit).await {
        Ok(d) => match d.retry_after {
            None => Ok(()),
            Some(wait) => {
                counted("rate_limited");
                tracing::info!(
                    bucket = bucket.split(':').nth(1),
                    "one-time codes rate limited"
                );
                Err(wait)
            }
        },
        Err(e) => {
            metrics().rate_limit_errors.inc();
            tracing::warn!(error = %e, "rate limiter unavailable; request let through");
            Ok(())
        }
    }
}

async fn take(req: &HttpRequest, bucket: &str, limit: &RateLimit) -> Result<(), Duration> {
    take_counted(req, bucket, limit, count).await
}

pub(super) fn address_of(req: &HttpRequest) -> Option<String> {
    let l = req.app_data::<web::Data<LookupLimits>>()?;
    l.client_address(req).map(address_bucket)
}

/// A phone as a bucket name: a keyed hash (no phone number in the limiter's keys, and none
/// to recover from them by hashing guesses: README "Personal data at rest").
pub(super) fn phone_bucket(keys: &loyalty_core::sealing::KeyRing, phone: &str) -> String {
    format!("enrol:phone:{}", keys.lookup_hash("enrol-phone", phone))
}

/// `GET /join/{sid}/{token}`: the form.
pub async fn form(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let lang = lang_of(&req, None);
    let (sid, token) = path.into_inner();
    let (f, store, program) = match enrolment_store(&gw, &sid, &token).await {
        Ok(Some(v)) => v,
        Ok(None) => return unknown(lang),
        Err(e) => return failure_page(lang, &e),
    };
    let Some(_) = req
        .app_data::<web::Data<SelfEnrolment>>()
        .filter(|se| se.notifier.is_some())
    else {
        return unavailable(lang);
    };
    start_form(
        StatusCode::OK,
        &f,
        &store,
        &program,
        lang,
        &Typed::default(),
        None,
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf: String,
    lang: Option<String>,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    birthday: String,
    consent_sms: Option<String>,
    consent_email: Option<String>,
    #[serde(default)]
    email: String,
}

/// What both form posts check first, in this order: the store of the link (404 page), this
/// page's state and, when `sends` (the post sends a code), a notifier (503 page), then the
/// form's anti-forgery token (403 page). `Err`: the page to answer instead.
async fn posted_form<'r>(
    req: &'r HttpRequest,
    gw: &Gateway,
    sid: &str,
    token: &str,
    csrf: &str,
    lang: Lang,
    sends: bool,
) -> Result<
    (
        Arc<Franchise>,
        Store,
        Arc<loyalty_domain::Program>,
        &'r SelfEnrolment,
    ),
    HttpResponse,
> {
    let (f, store, program) = match enrolment_store(gw, sid, token).await {
        Ok(Some(v)) => v,
        Ok(None) => return Err(unknown(lang)),
        Err(e) => return Err(failure_page(lang, &e)),
    };
    let Some(se) = req
        .app_data::<web::Data<SelfEnrolment>>()
        .filter(|se| !sends || se.notifier.is_some())
    else {
        count("no_notifier");
        return Err(unavailable(lang));
    };
    if cross_site(req)
        || !identity::verify_enrolment_form_token(
            &f.secret,
            &store.id,
            csrf,
            now_secs(),
            FORM_MAX_AGE,
        )
    {
        return Err(stale_form(lang));
    }
    Ok((f, store, program, se.get_ref()))
}

/// `POST /join/{sid}/{token}`: sends a code, answers the code form.
pub async fn request_code(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    form: Result<web::Form<StartForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(|f| f.into_inner()).unwrap_or_default();
    let lang = lang_of(&req, form.lang.as_deref());
    let (sid, token) = path.into_inner();
    let (f, store, program, se) =
        match posted_form(&req, &gw, &sid, &token, &form.csrf, lang, true).await {
            Ok(v) => v,
            Err(page) => return page,
        };
    let Some(notifier) = se.notifier.clone() else {
        return unavailable(lang);
    };
    let consent = Consent {
        sms: form.consent_sms.as_deref() == Some("yes"),
        email: form.consent_email.as_deref() == Some("yes"),
    };
    let typed = Typed {
        phone: &form.phone,
        name: &form.name,
        birthday: &form.birthday,
        consent,
        email: &form.email,
    };
    let phone = form.phone.trim().replace([' ', '.', '-'], "");
    let name = Some(form.name.clone()).filter(|n| !n.trim().is_empty());
    let birthday = Some(form.birthday.trim().to_owned()).filter(|b| !b.is_empty());
    let refuse = |message: &str| {
        start_form(
            StatusCode::BAD_REQUEST,
            &f,
            &store,
            &program,
            lang,
            &typed,
            Some(message),
        )
    };
    if name.is_none() {
        return refuse(lang.pick("Indiquez votre prénom.", "Enter your first name."));
    }
    let email = Some(form.email.trim()).filter(|e| !e.is_empty());
    if consent.email && email.is_none() {
        return refuse(lang.pick(
            "Indiquez votre adresse e-mail pour recevoir les offres par e-mail.",
            "Enter your e-mail address to receive offers by e-mail.",
        ));
    }
    let profile = match input::profile(&phone, name, birthday, consent)
        .and_then(|p| input::with_email(p, email))
    {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            return refuse(if msg.contains("email") {
                lang.pick(
                    "Cette adresse e-mail n’est pas valide.",
                    "This e-mail address is not valid.",
                )
            } else if msg.contains("birthday") {
                lang.pick(
                    "Cette date d’anniversaire n’est pas valide.",
                    "This birthday is not a valid date.",
                )
            } else if msg.contains("name") {
                lang.pick(
                    "Ce prénom n’est pas valide (100 caractères au plus).",
                    "This first name is not valid (100 characters at most).",
                )
            } else {
                lang.pick(
                    "Ce numéro n’est pas valide\u{a0}: écrivez-le au format international, \
                     par exemple +33612345678.",
                    "This number is not valid: write it in international form, for example \
                     +33612345678.",
                )
            });
        }
    };
    if let Some(addr) = address_of(&req) {
        if let Err(wait) = take(
            &req,
            &format!("enrol:codes:addr:{addr}"),
            &CODES_PER_ADDRESS,
        )
        .await
        {
            return too_many(lang, wait, WAIT_CODES);
        }
    }
    if let Err(wait) = take(
        &req,
        &phone_bucket(&gw.config.keys, profile.phone.as_str()),
        &CODES_PER_PHONE,
    )
    .await
    {
        return too_many(lang, wait, WAIT_CODES);
    }
    let phone_text = profile.phone.as_str().to_owned();
    let phone_value = profile.phone.clone();
    // Sealed (README "Personal data at rest"): the entry may wait in Redis.
    let payload = match gw.config.keys.to_json(&Waiting { profile }) {
        Ok(p) => p,
        Err(e) => return codes_failed(lang, se, e, count),
    };
    let scope = scope_of(&f, &store);
    let sent = hold_and_send(
        se,
        notifier.as_ref(),
        &f.secret,
        scope,
        payload,
        Some(&phone_value),
        lang,
        count,
    );
    let challenge = match sent.await {
        Ok(c) => c,
        Err(page) => return page,
    };
    code_form(
        StatusCode::OK,
        se,
        &f,
        &store,
        lang,
        &challenge,
        &phone_text,
        None,
    )
}

/// The code form, of this page and of the card sign-in page.
#[derive(Debug, Default, Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) challenge: String,
    #[serde(default)]
    pub(super) code: String,
    pub(super) lang: Option<String>,
}

/// `POST /join/{sid}/{token}/code`: checks the code; on success enrols and 303 to the card.
pub async fn confirm(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    form: Result<web::Form<CodeForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(|f| f.into_inner()).unwrap_or_default();
    let lang = lang_of(&req, form.lang.as_deref());
    let (sid, token) = path.into_inner();
    let (f, store, _program, se) =
        match posted_form(&req, &gw, &sid, &token, &form.csrf, lang, false).await {
            Ok(v) => v,
            Err(page) => return page,
        };
    if let Some(addr) = address_of(&req) {
        if let Err(wait) = take(
            &req,
            &format!("enrol:tries:addr:{addr}"),
            &TRIES_PER_ADDRESS,
        )
        .await
        {
            return too_many(lang, wait, WAIT_TRIES);
        }
    }
    let action = format!("/join/{}/{}", store.id, token);
    let code = form.code.trim();
    // A malformed challenge is no pending code (the adapters refuse it as `Invalid`).
    if loyalty_core::pending_codes::check_name("key", &form.challenge).is_err() {
        count("expired");
        return gone(lang, &action);
    }
    // Any text is hashed: a malformed code is a wrong one, and uses a try.
    let hash = identity::one_time_code_hash(&f.secret, &form.challenge, code);
    let verdict = match se
        .codes
        .verify(&form.challenge, &scope_of(&f, &store), &hash)
        .await
    {
        Ok(v) => v,
        Err(e) => return codes_failed(lang, se, e, count),
    };
    let payload = match verdict {
        Verdict::Gone => {
            count("expired");
            return gone(lang, &action);
        }
        Verdict::Locked { retry_after } => {
            count("too_many_attempts");
            return too_many(lang, retry_after.max(Duration::from_secs(1)), WAIT_TRIES);
        }
        Verdict::Wrong { left, payload } => {
            count("wrong");
            let phone = gw
                .config
                .keys
                .from_json::<Waiting>("pending code payload", &payload)
                .map(|w| w.profile.phone.as_str().to_owned())
                .unwrap_or_default();
            let message = match lang {
                Lang::Fr => format!("Code erroné. Encore {left} essai(s)."),
                Lang::En => format!("Wrong code. {left} attempt(s) left."),
            };
            return code_form(
                StatusCode::BAD_REQUEST,
                se,
                &f,
                &store,
                lang,
                &form.challenge,
                &phone,
                Some(&message),
            );
        }
        Verdict::Right { payload } => payload,
    };
    let waiting = match gw
        .config
        .keys
        .from_json::<Waiting>("pending code payload", &payload)
    {
        Ok(w) => w,
        Err(e) => return codes_failed(lang, se, e, count),
    };
    count("confirmed");
    let principal = Principal {
        role: Role::Store,
        franchise_id: Some(f.id.clone()),
        store_id: Some(store.id.clone()),
        key_id: None,
    };
    let e = match crate::routes::members::enrol_member(
        &gw,
        &f,
        &principal,
        waiting.profile,
        Some(gw.config.default_wait),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => return failure_page(lang, &e),
    };
    let (url, _) = card_link(&gw, &f, &e.member, DEFAULT_LINK_DAYS);
    // Relative to this host (the form's `form-action 'self'` covers the redirect too).
    let location = url
        .strip_prefix(gw.config.public_url.as_str())
        .map_or(url.clone(), str::to_owned);
    let location = format!("{location}&lang={}", lang.code());
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_six_digits_and_hash_per_challenge_and_secret() {
        for _ in 0..100 {
            let (code, challenge) = new_code();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
            assert!(loyalty_core::pending_codes::check_name("key", &challenge).is_ok());
            let h = identity::one_time_code_hash("s1", &challenge, &code);
            assert_ne!(h, identity::one_time_code_hash("s1", "other", &code));
            assert_ne!(h, identity::one_time_code_hash("s2", &challenge, &code));
        }
    }

    #[test]
    fn phone_buckets_hold_no_phone() {
        let keys = loyalty_core::sealing::KeyRing::dev();
        let b = phone_bucket(&keys, "+33612345678");
        assert!(!b.contains("612345678"));
        assert_eq!(b, phone_bucket(&keys, "+33612345678"));
        assert_ne!(b, phone_bucket(&keys, "+33612345679"));
    }
}
