//! The consent settings on the member's card page (README "Privacy"): which channels the
//! member receives offers on, with a form to change them (and to give an e-mail address).
//!
//! The form posts to the card link itself (`POST /card/{fid}/{member_id}?expires=…&sig=…`),
//! which is what authorises it, and the change travels the log like every command
//! (`SetConsent`, event id `consent.<member>.<version>.<digest of the form>`: a resent form on
//! one state is one event). Then 303 back to the card (`&consent=saved`, or why not), so that a reload posts
//! nothing again.

use std::fmt::Write as _;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use data_encoding::HEXLOWER;
use loyalty_core::command::HQ_STORE;
use loyalty_core::input;
use loyalty_core::metrics::metrics;
use loyalty_domain::{EventId, MemberId, MemberState, Rejection, StoreId};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::escape;
use super::member::{error_page, failure_page, Lang};
use crate::problem::ApiError;
use crate::routes::consent::{submit_consent, ConsentChange};
use crate::state::Gateway;

/// The extra style of the consent form on the card.
pub(super) const CSS: &str = ".consent form{display:grid;gap:.6rem;margin:.4rem 0 0}\
.consent label{display:flex;gap:.5rem;align-items:center}\
.consent label.address{display:grid;gap:.25rem;font-weight:600}\
.consent input[type=email]{font:inherit;padding:.5rem;border:1px solid #bbb;border-radius:.5rem}\
.consent button{font:inherit;font-weight:700;padding:.6rem;border:0;border-radius:.5rem;\
background:var(--brand);color:#fff}\
.consent .notice{background:#fff6d5;padding:.5rem;border-radius:.5rem;margin:0}";

/// The card's query without the consent notice: the link's own parameters.
fn link_query(req: &HttpRequest) -> String {
    req.query_string()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("consent="))
        .collect::<Vec<_>>()
        .join("&")
}

/// What the notice of `?consent=…` says, if anything.
fn notice(lang: Lang, req: &HttpRequest) -> Option<&'static str> {
    let code = req
        .query_string()
        .split('&')
        .find_map(|p| p.strip_prefix("consent="))?;
    Some(match code {
        "saved" => lang.pick(
            "Vos préférences sont enregistrées.",
            "Your choices are saved.",
        ),
        "email-required" => lang.pick(
            "Indiquez votre adresse e-mail pour recevoir les offres par e-mail.",
            "Enter your e-mail address to receive offers by e-mail.",
        ),
        "invalid-email" => lang.pick(
            "Cette adresse e-mail n’est pas valide.",
            "This e-mail address is not valid.",
        ),
        _ => lang.pick(
            "Vos préférences n’ont pas pu être enregistrées. Réessayez.",
            "Your choices could not be saved. Please try again.",
        ),
    })
}

/// The card's consent section for `state`: the channels and the form that changes them.
pub(super) fn section(lang: Lang, state: &MemberState, req: &HttpRequest) -> String {
    let consent = state.profile.consent;
    let checked = |on: bool| if on { " checked" } else { "" };
    let mut b = String::with_capacity(2048);
    let _ = write!(
        b,
        "<section class=\"consent\" id=\"consent\" data-sms=\"{}\" data-email=\"{}\" \
         data-has-email=\"{}\">\n<h2>{}</h2>\n",
        consent.sms,
        consent.email,
        state.profile.email.is_some(),
        lang.pick("Mes offres", "My offers"),
    );
    if let Some(n) = notice(lang, req) {
        let _ = writeln!(
            b,
            "<p class=\"notice\" role=\"status\" id=\"consent-notice\">{}</p>",
            escape(n)
        );
    }
    let address_hint = if state.profile.email.is_some() {
        lang.pick(
            "Nouvelle adresse e-mail (facultatif\u{a0}: la vôtre est enregistrée)",
            "New e-mail address (optional: yours is on file)",
        )
    } else {
        lang.pick("Adresse e-mail", "E-mail address")
    };
    let _ = write!(
        b,
        "<form id=\"consent-form\" method=\"post\" action=\"?{}\">\n\
         <label><input type=\"checkbox\" name=\"consent_sms\" id=\"consent-sms\" value=\"yes\"{}> \
         {}</label>\n\
         <label><input type=\"checkbox\" name=\"consent_email\" id=\"consent-email\" \
         value=\"yes\"{}> {}</label>\n\
         <label class=\"address\">{}<input type=\"email\" name=\"email\" id=\"consent-address\" \
         autocomplete=\"email\" maxlength=\"254\"></label>\n\
         <button type=\"submit\" id=\"consent-save\">{}</button>\n</form>\n</section>\n",
        escape(&link_query(req)),
        checked(consent.sms),
        lang.pick("Recevoir les offres par SMS", "Receive offers by SMS"),
        checked(consent.email),
        lang.pick("Recevoir les offres par e-mail", "Receive offers by e-mail"),
        address_hint,
        lang.pick("Enregistrer", "Save"),
    );
    b
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ConsentForm {
    consent_sms: Option<String>,
    consent_email: Option<String>,
    #[serde(default)]
    email: String,
}

/// 303 back to the card, with `consent=<code>` for its notice.
fn back(req: &HttpRequest, code: &str) -> HttpResponse {
    let query = link_query(req);
    let sep = if query.is_empty() { "" } else { "&" };
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("{}?{query}{sep}consent={code}#consent", req.path()),
        ))
        .finish()
}

/// Applies the card form's consent to `member` (whose card link was verified).
pub(super) async fn save(
    gw: &Gateway,
    f: &loyalty_core::model::Franchise,
    member: &MemberId,
    lang: Lang,
    req: &HttpRequest,
    form: Option<web::Form<ConsentForm>>,
) -> HttpResponse {
    if super::join::cross_site(req) {
        return error_page(
            StatusCode::FORBIDDEN,
            lang,
            lang.pick("Envoi refusé", "Refused"),
            lang.pick(
                "Ce formulaire ne peut être envoyé que depuis votre carte.",
                "This form can only be sent from your card.",
            ),
        );
    }
    let form = form.map(|f| f.into_inner()).unwrap_or_default();
    let typed = Some(form.email.trim()).filter(|e| !e.is_empty());
    let address = match input::email(typed) {
        Ok(a) => a,
        Err(_) => return back(req, "invalid-email"),
    };
    let state = match gw.store.member(member).await {
        Ok(Some(s)) if s.franchise_id == f.id && s.erased_at.is_none() => s,
        Ok(_) => return super::member::unknown_card(lang),
        Err(e) => return failure_page(lang, &ApiError::from(e)),
    };
    let change = match consent_change(&state, &form, address) {
        Ok(c) => c,
        Err(e) => return failure_page(lang, &e),
    };
    let deadline = Some(gw.config.default_wait);
    match submit_consent(gw, f, member, change, deadline).await {
        Ok(_) => {
            metrics().consent_changes.with_label_values(&["card"]).inc();
            tracing::info!(franchise = %f.id, "consent changed on the card page");
            back(req, "saved")
        }
        Err(ApiError::Rejected(Rejection::EmailRequired)) => back(req, "email-required"),
        Err(ApiError::Rejected(Rejection::MemberErased)) => super::member::unknown_card(lang),
        Err(ApiError::IdempotencyConflict(_)) => back(req, "retry"),
        Err(e) => failure_page(lang, &e),
    }
}

/// The command of the form: both channels as ticked, the address if one was typed. Its event
/// id names the member's version and a digest of what the form asks: the same form sent again
/// on the same state is one event, another one (after a refusal, which changes no version) is
/// another event.
fn consent_change(
    state: &MemberState,
    form: &ConsentForm,
    address: Option<loyalty_domain::EmailAddress>,
) -> Result<ConsentChange, ApiError> {
    let sms = form.consent_sms.as_deref() == Some("yes");
    let email = form.consent_email.as_deref() == Some("yes");
    let asked = format!(
        "{sms}:{email}:{}",
        address.as_ref().map_or("", |a| a.as_str())
    );
    let digest = HEXLOWER.encode(&Sha256::digest(asked.as_bytes())[..6]);
    Ok(ConsentChange {
        store: StoreId::parse(HQ_STORE)?,
        event_id: EventId::parse(&format!(
            "consent.{}.{}.{digest}",
            state.member_id, state.version
        ))?,
        sms: Some(sms),
        email: Some(email),
        email_address: address,
    })
}
