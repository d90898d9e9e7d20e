//! Signing in again to the card with a one-time code (issue 13): a member whose card link
//! expired (or was lost) types their phone on the franchise's sign-in page and, once the code
//! texted to it is confirmed, lands on their card through a fresh signed card link (303).
//!
//! - `GET /card/{fid}/sign-in`: the form (404 for an unknown franchise; 503 when this process
//!   has no notifier).
//! - `POST /card/{fid}/sign-in`: answers the code form. For a member (not erased) a 6-digit
//!   code is sent through the [`loyalty_core::notify::Notifier`] port. For any other phone the
//!   answer is the very same page, and a code is held just the same but never sent: nobody
//!   can tell a member's phone from another before the code is confirmed (a wrong code is
//!   "wrong" for both, never "expired" for one of them). Should a code of a non-member ever be
//!   guessed, the page says that no card holds this number and how to join.
//! - `POST /card/{fid}/sign-in/code`: checks the code; on success 303 to the card.
//!
//! Everything else is the self-enrolment page's ([`super::join`]): its state (notifier,
//! pending codes, code lifetime), its rate limits and their buckets (codes per phone and per
//! address, tries per address: the limits cap the texts a phone receives from both pages),
//! codes held as keyed hashes, single use, [`MAX_ATTEMPTS`] tries, and forms with an
//! anti-forgery token (here bound to the franchise) refused when a browser marks them
//! cross-site. Counted in `loyalty_card_sign_ins_total{result}`; phones are never logged.

use std::sync::LazyLock;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::command::HQ_STORE;
use loyalty_core::identity;
use loyalty_core::metrics::metrics;
use loyalty_core::model::Franchise;
use loyalty_core::notify::mask_phone;
use loyalty_core::pending_codes::Verdict;
use loyalty_domain::{FranchiseId, MemberId, Phone, StoreId};
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::escape;
use super::join::{
    address_of, codes_failed, css, hold_and_send, lang_of, phone_bucket, take_counted, too_many,
    unavailable, CodeForm, SelfEnrolment, CODES_PER_ADDRESS, CODES_PER_PHONE, FORM_MAX_AGE,
    TRIES_PER_ADDRESS, WAIT_CODES, WAIT_TRIES,
};
use super::member::{card_link, error_page, failure_page, now_secs, page, Lang, DEFAULT_LINK_DAYS};
use crate::state::Gateway;

/// `loyalty_card_sign_ins_total{result}`, registered on the platform's registry on first use.
static SIGN_INS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "loyalty_card_sign_ins_total",
            "Card sign-ins with a one-time code, by result (sent, not_member, send_failed, \
             no_notifier, rate_limited, confirmed, no_card, wrong, expired, too_many_attempts, \
             store_unavailable).",
        ),
        &["result"],
    )
    .ok()?;
    metrics().registry.register(Box::new(c.clone())).ok()?;
    Some(c)
});

fn count(result: &str) {
    if let Some(c) = SIGN_INS.as_ref() {
        c.with_label_values(&[result]).inc();
    }
}

/// What waits with a code: the member it signs in (`None` for a phone that is no member's)
/// and the phone as the page shows it (masked), for a retry's page.
#[derive(Serialize, Deserialize)]
struct Waiting {
    member: Option<MemberId>,
    masked: String,
}

/// The scope a sign-in code is bound to (no store's: store ids cannot hold a `/`).
fn scope_of(f: &Franchise) -> String {
    format!("{}/card-sign-in", f.id)
}

/// The forms' anti-forgery tokens are the enrolment form's, made under a key of their own (so
/// that neither page accepts the other's) for the HQ pseudo-store.
fn form_key(f: &Franchise) -> String {
    format!("card-sign-in:v1:{}", f.secret)
}

fn form_token(f: &Franchise) -> String {
    match StoreId::parse(HQ_STORE) {
        Ok(hq) => identity::enrolment_form_token(&form_key(f), &hq, now_secs()),
        Err(_) => String::new(),
    }
}

fn form_token_ok(f: &Franchise, token: &str) -> bool {
    StoreId::parse(HQ_STORE).is_ok_and(|hq| {
        identity::verify_enrolment_form_token(&form_key(f), &hq, token, now_secs(), FORM_MAX_AGE)
    })
}

/// The path of the sign-in page of franchise `fid`.
pub fn sign_in_path(fid: &FranchiseId) -> String {
    format!("/card/{fid}/sign-in")
}

fn unknown(lang: Lang) -> HttpResponse {
    error_page(
        StatusCode::NOT_FOUND,
        lang,
        lang.pick("Programme introuvable", "Program not found"),
        lang.pick(
            "Cette page ne correspond à aucun programme de fidélité.",
            "This page matches no loyalty program.",
        ),
    )
}

fn stale_form(lang: Lang) -> HttpResponse {
    error_page(
        StatusCode::FORBIDDEN,
        lang,
        lang.pick("Formulaire expiré", "Form expired"),
        lang.pick(
            "Ce formulaire a expiré ou ne vient pas de cette page. Rouvrez la page de connexion.",
            "This form has expired or did not come from this page. Open the sign-in page again.",
        ),
    )
}

fn header_html(b: &mut String, f: &Franchise) {
    b.push_str(&format!(
        "<main class=\"card sign-in\" id=\"sign-in\">\n<header><p class=\"brand\" \
         id=\"franchise\">{}</p></header>\n<section>\n",
        escape(&f.name),
    ));
}

fn form_error(b: &mut String, error: Option<&str>) {
    if let Some(e) = error {
        b.push_str(&format!(
            "<p class=\"error\" role=\"alert\" id=\"form-error\">{}</p>\n",
            escape(e)
        ));
    }
}

/// The first form: the phone.
fn phone_form(
    status: StatusCode,
    f: &Franchise,
    lang: Lang,
    phone: &str,
    error: Option<&str>,
) -> HttpResponse {
    let mut b = String::with_capacity(2048);
    header_html(&mut b, f);
    b.push_str(&format!(
        "<h1>{}</h1>\n<p>{}</p>\n",
        lang.pick("Retrouver ma carte", "Open my card"),
        lang.pick(
            "Indiquez le numéro de téléphone de votre carte de fidélité\u{a0}: nous vous \
             envoyons un code à 6 chiffres par SMS.",
            "Enter the phone number of your loyalty card: we text you a 6-digit code."
        ),
    ));
    form_error(&mut b, error);
    b.push_str(&format!(
        "<form id=\"sign-in-phone\" method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <input type=\"hidden\" name=\"lang\" value=\"{lang}\">\n\
         <label>{phone_l}<input type=\"tel\" name=\"phone\" id=\"phone\" required \
         autocomplete=\"tel\" placeholder=\"+33612345678\" value=\"{phone}\"></label>\n\
         <button type=\"submit\" id=\"send-code\">{send_l}</button>\n</form>\n</section>\n</main>",
        action = escape(&sign_in_path(&f.id)),
        csrf = escape(&form_token(f)),
        lang = lang.code(),
        phone_l = lang.pick("Numéro de téléphone", "Phone number"),
        phone = escape(phone),
        send_l = lang.pick("Recevoir mon code", "Send me a code"),
    ));
    let title = format!("{} — {}", f.name, lang.pick("Ma carte", "My card"));
    page(status, lang, &title, &css(), &b)
}

/// The second form: the code. The same for every phone (only the masked phone differs).
fn code_form(
    status: StatusCode,
    se: &SelfEnrolment,
    f: &Franchise,
    lang: Lang,
    challenge: &str,
    masked: &str,
    error: Option<&str>,
) -> HttpResponse {
    let mut b = String::with_capacity(2048);
    header_html(&mut b, f);
    b.push_str(&format!(
        "<h1>{}</h1>\n<p id=\"sent-to\">{} <strong>{}</strong></p>\n",
        lang.pick("Entrez votre code", "Enter your code"),
        lang.pick(
            "Si ce numéro est celui d’une carte, un code à 6 chiffres vient d’être envoyé au",
            "If this number is a card's, a 6-digit code was just sent to"
        ),
        escape(masked),
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
    form_error(&mut b, error);
    b.push_str(&format!(
        "<form id=\"confirm\" method=\"post\" action=\"{action}/code\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <input type=\"hidden\" name=\"challenge\" value=\"{challenge}\">\n\
         <input type=\"hidden\" name=\"lang\" value=\"{lang}\">\n\
         <label>{code_l}<input type=\"text\" name=\"code\" id=\"code\" required \
         inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" \
         autocomplete=\"one-time-code\"></label>\n\
         <button type=\"submit\" id=\"confirm-code\">{ok_l}</button>\n</form>\n\
         <p class=\"hint\">{hint}</p>\n</section>\n</main>",
        action = escape(&sign_in_path(&f.id)),
        csrf = escape(&form_token(f)),
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

/// A code expired, used or unknown (410), with a link to ask for another.
fn gone(f: &Franchise, lang: Lang) -> HttpResponse {
    let body = format!(
        "<main class=\"error\" id=\"error\" data-status=\"410\">\n<h1>{}</h1>\n<p>{}</p>\n\
         <p><a id=\"restart\" href=\"{}\">{}</a></p>\n</main>",
        lang.pick("Code expiré", "Code expired"),
        lang.pick(
            "Ce code a expiré ou a déjà servi.",
            "This code has expired or was already used."
        ),
        escape(&format!("{}?lang={}", sign_in_path(&f.id), lang.code())),
        lang.pick("Recevoir un nouveau code", "Get a new code"),
    );
    let title = lang.pick("Code expiré", "Code expired");
    page(StatusCode::GONE, lang, title, &css(), &body)
}

/// A confirmed code of a phone that holds no card (404).
fn no_card(lang: Lang) -> HttpResponse {
    error_page(
        StatusCode::NOT_FOUND,
        lang,
        lang.pick("Aucune carte", "No card"),
        lang.pick(
            "Aucune carte de fidélité n’est enregistrée pour ce numéro. Scannez le QR code \
             d’un magasin ou demandez en caisse pour rejoindre le programme.",
            "No loyalty card holds this number. Scan a store's QR code or ask at the till to \
             join the program.",
        ),
    )
}

/// The franchise of the page, this page's state (with a notifier when `sends`), and for a
/// post its anti-forgery token checked. `Err`: the page to answer instead.
async fn checked<'r>(
    req: &'r HttpRequest,
    gw: &Gateway,
    fid: &str,
    csrf: Option<&str>,
    lang: Lang,
    sends: bool,
) -> Result<(std::sync::Arc<Franchise>, &'r SelfEnrolment), HttpResponse> {
    let Ok(fid) = FranchiseId::parse(fid) else {
        return Err(unknown(lang));
    };
    let f = match gw.franchise(&fid).await {
        Ok(Some(f)) => f,
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
    if let Some(csrf) = csrf {
        if super::join::cross_site(req) || !form_token_ok(&f, csrf) {
            return Err(stale_form(lang));
        }
    }
    Ok((f, se.get_ref()))
}

/// `GET /card/{fid}/sign-in`: the phone form.
pub async fn form(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
) -> HttpResponse {
    let lang = lang_of(&req, None);
    match checked(&req, &gw, &path, None, lang, true).await {
        Ok((f, _)) => phone_form(StatusCode::OK, &f, lang, "", None),
        Err(page) => page,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PhoneForm {
    #[serde(default)]
    csrf: String,
    lang: Option<String>,
    #[serde(default)]
    phone: String,
}

/// `POST /card/{fid}/sign-in`: holds a code (sent to members only), answers the code form.
pub async fn request_code(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    form: Result<web::Form<PhoneForm>, actix_web::Error>,
) -> HttpResponse {
    let span = tracing::info_span!("card_sign_in", step = "request_code", franchise = %path);
    request_code_inner(req, gw, path.into_inner(), form)
        .instrument(span)
        .await
}

async fn request_code_inner(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    fid: String,
    form: Result<web::Form<PhoneForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(|f| f.into_inner()).unwrap_or_default();
    let lang = lang_of(&req, form.lang.as_deref());
    let (f, se) = match checked(&req, &gw, &fid, Some(&form.csrf), lang, true).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let Some(notifier) = se.notifier.clone() else {
        return unavailable(lang);
    };
    let typed = form.phone.trim().replace([' ', '.', '-'], "");
    let phone = match Phone::parse(&typed) {
        Ok(p) if !p.is_erased() => p,
        _ => {
            let message = lang.pick(
                "Ce numéro n’est pas valide\u{a0}: écrivez-le au format international, par \
                 exemple +33612345678.",
                "This number is not valid: write it in international form, for example \
                 +33612345678.",
            );
            return phone_form(
                StatusCode::BAD_REQUEST,
                &f,
                lang,
                &form.phone,
                Some(message),
            );
        }
    };
    // The limits come before anything is looked up: members and others are limited alike.
    if let Some(addr) = address_of(&req) {
        let bucket = format!("enrol:codes:addr:{addr}");
        if let Err(wait) = take_counted(&req, &bucket, &CODES_PER_ADDRESS, count).await {
            return too_many(lang, wait, WAIT_CODES);
        }
    }
    let bucket = phone_bucket(&gw.config.keys, phone.as_str());
    if let Err(wait) = take_counted(&req, &bucket, &CODES_PER_PHONE, count).await {
        return too_many(lang, wait, WAIT_CODES);
    }
    let candidate = identity::member_id(&f.secret, &phone);
    let member = match gw.member_status(&f, &candidate).await {
        Ok(s) => s
            .filter(|s| !crate::routes::privacy::status_is_erased(&s.json))
            .map(|_| candidate),
        Err(e) => return failure_page(lang, &e),
    };
    let known = member.is_some();
    let payload = match serde_json::to_vec(&Waiting {
        member,
        masked: mask_phone(phone.as_str()),
    }) {
        Ok(p) => p,
        Err(e) => {
            return codes_failed(lang, se, loyalty_core::Error::Invalid(e.to_string()), count)
        }
    };
    // A stranger's code is held, never sent: the page is the same as a member's.
    let send_to = known.then_some(&phone);
    let sent = hold_and_send(
        se,
        notifier.as_ref(),
        &f.secret,
        scope_of(&f),
        payload,
        send_to,
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
        lang,
        &challenge,
        &mask_phone(phone.as_str()),
        None,
    )
}

/// `POST /card/{fid}/sign-in/code`: checks the code; on success 303 to a fresh card link.
pub async fn confirm(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    form: Result<web::Form<CodeForm>, actix_web::Error>,
) -> HttpResponse {
    let span = tracing::info_span!("card_sign_in", step = "confirm", franchise = %path);
    confirm_inner(req, gw, path.into_inner(), form)
        .instrument(span)
        .await
}

async fn confirm_inner(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    fid: String,
    form: Result<web::Form<CodeForm>, actix_web::Error>,
) -> HttpResponse {
    let form = form.map(|f| f.into_inner()).unwrap_or_default();
    let lang = lang_of(&req, form.lang.as_deref());
    let (f, se) = match checked(&req, &gw, &fid, Some(&form.csrf), lang, false).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    if let Some(addr) = address_of(&req) {
        let bucket = format!("enrol:tries:addr:{addr}");
        if let Err(wait) = take_counted(&req, &bucket, &TRIES_PER_ADDRESS, count).await {
            return too_many(lang, wait, WAIT_TRIES);
        }
    }
    if loyalty_core::pending_codes::check_name("key", &form.challenge).is_err() {
        count("expired");
        return gone(&f, lang);
    }
    let hash = identity::one_time_code_hash(&f.secret, &form.challenge, form.code.trim());
    let verdict = match se.codes.verify(&form.challenge, &scope_of(&f), &hash).await {
        Ok(v) => v,
        Err(e) => return codes_failed(lang, se, e, count),
    };
    let payload = match verdict {
        Verdict::Gone => {
            count("expired");
            return gone(&f, lang);
        }
        Verdict::Locked { retry_after } => {
            count("too_many_attempts");
            return too_many(lang, retry_after.max(Duration::from_secs(1)), WAIT_TRIES);
        }
        Verdict::Wrong { left, payload } => {
            count("wrong");
            let message = match lang {
                Lang::Fr => format!("Code erroné. Encore {left} essai(s)."),
                Lang::En => format!("Wrong code. {left} attempt(s) left."),
            };
            let masked = serde_json::from_slice::<Waiting>(&payload)
                .map(|w| w.masked)
                .unwrap_or_default();
            return code_form(
                StatusCode::BAD_REQUEST,
                se,
                &f,
                lang,
                &form.challenge,
                &masked,
                Some(&message),
            );
        }
        Verdict::Right { payload } => payload,
    };
    let member = match serde_json::from_slice::<Waiting>(&payload) {
        Ok(w) => w.member,
        Err(e) => {
            let e = loyalty_core::Error::Corrupt(format!("pending code payload: {e}"));
            return codes_failed(lang, se, e, count);
        }
    };
    let Some(member) = member else {
        count("no_card");
        return no_card(lang);
    };
    count("confirmed");
    tracing::info!(franchise = %f.id, member = %member, "signed in to the card with a code");
    let (url, _) = card_link(&gw, &f, &member, DEFAULT_LINK_DAYS);
    let location = url
        .strip_prefix(gw.config.public_url.as_str())
        .map_or(url.clone(), str::to_owned);
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("{location}&lang={}", lang.code())))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_tokens_are_not_the_enrolment_forms() {
        let f = Franchise {
            id: FranchiseId::parse("f1").unwrap(),
            name: "F".into(),
            secret: "s1".into(),
            program_version: 1,
            created_at: loyalty_domain::Timestamp(0),
        };
        let t = form_token(&f);
        assert!(form_token_ok(&f, &t));
        let hq = StoreId::parse(HQ_STORE).unwrap();
        assert!(!identity::verify_enrolment_form_token(
            &f.secret,
            &hq,
            &t,
            now_secs(),
            FORM_MAX_AGE
        ));
        let join = identity::enrolment_form_token(&f.secret, &hq, now_secs());
        assert!(!form_token_ok(&f, &join));
    }
}
