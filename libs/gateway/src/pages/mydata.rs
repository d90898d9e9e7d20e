//! The card page's "My data" section (issue 13, README "Privacy"): the member downloads their
//! data and asks for its erasure themselves, authorised by the card link (a bearer credential,
//! as for the card's consent form).
//!
//! - `GET /card/{fid}/{member_id}/export?expires=…&sig=…`: the very document of the HQ export
//!   (`GET /v1/members/{id}/export`, [`privacy::export_response`]), as an attachment.
//! - `GET /card/{fid}/{member_id}/erase?…`: a confirmation form (a box to tick).
//! - `POST /card/{fid}/{member_id}/erase?…`: the HQ route's erasure command
//!   ([`privacy::submit_erasure`], event id `erase.<member>`: a second request is a replay),
//!   then a page saying it is done (200) or under way (202). A post a browser marks
//!   cross-site is refused (403), and one without the ticked box answers the form again (400).
//!
//! An erased member has no card any more: their link then leads to no card (404), here too.
//! Counted in `loyalty_card_data_requests_total{kind,result}`.

use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::metrics::metrics;
use loyalty_core::model::Franchise;
use loyalty_domain::{MemberId, Rejection};
use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;

use super::escape;
use super::join::{cross_site, css};
use super::member::{
    error_page, failure_page, page, refused_page, unknown_card, verified_member, CardQuery, Lang,
};
use crate::problem::ApiError;
use crate::routes::privacy::{self, Erasure};
use crate::state::Gateway;

/// `loyalty_card_data_requests_total{kind,result}`, registered on first use.
static REQUESTS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "loyalty_card_data_requests_total",
            "Data requests from the member's card page, by kind (export, erasure) and result \
             (served, erased, accepted, unconfirmed, refused, failed).",
        ),
        &["kind", "result"],
    )
    .ok()?;
    metrics().registry.register(Box::new(c.clone())).ok()?;
    Some(c)
});

fn count(kind: &str, result: &str) {
    if let Some(c) = REQUESTS.as_ref() {
        c.with_label_values(&[kind, result]).inc();
    }
}

/// The card link's own parameters (no `lang`, no notice).
fn link_query(req: &HttpRequest) -> String {
    req.query_string()
        .split('&')
        .filter(|p| p.starts_with("expires=") || p.starts_with("sig="))
        .collect::<Vec<_>>()
        .join("&")
}

/// The card's path (`/card/{fid}/{member}`) and the link's query.
fn card_base(f: &Franchise, member: &MemberId, req: &HttpRequest) -> (String, String) {
    (format!("/card/{}/{member}", f.id), link_query(req))
}

/// The section of the card page.
pub(super) fn section(f: &Franchise, member: &MemberId, lang: Lang, req: &HttpRequest) -> String {
    let (base, q) = card_base(f, member, req);
    format!(
        "<section class=\"my-data\" id=\"my-data\">\n<h2>{}</h2>\n<p>{}</p>\n<ul>\n\
         <li><a id=\"export\" href=\"{}\" download>{}</a></li>\n\
         <li><a id=\"erase\" href=\"{}\">{}</a></li>\n</ul>\n</section>\n",
        lang.pick("Mes données", "My data"),
        lang.pick(
            "Tout ce que le programme garde de vous, dans un fichier, ou son effacement.",
            "Everything the program keeps about you, as one file, or its erasure."
        ),
        escape(&format!("{base}/export?{q}")),
        lang.pick("Télécharger mes données", "Download my data"),
        escape(&format!("{base}/erase?{q}&lang={}", lang.code())),
        lang.pick("Effacer mes données", "Erase my data"),
    )
}

/// The card link's franchise and member, if it holds and the member is not erased; else the
/// page to answer.
async fn member_of(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
    mid: &str,
) -> Result<(std::sync::Arc<Franchise>, MemberId, Lang), HttpResponse> {
    let q = web::Query::<CardQuery>::from_query(req.query_string()).ok();
    let lang = Lang::of(req, q.as_ref().and_then(|q| q.lang.as_deref()));
    let (f, member) = match verified_member(gw, q.as_deref(), fid, mid).await {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return Err(refused_page(lang, why)),
        Err(e) => return Err(failure_page(lang, &e)),
    };
    match gw.member_status(&f, &member).await {
        Ok(Some(s)) if !privacy::status_is_erased(&s.json) => Ok((f, member, lang)),
        Ok(_) => Err(unknown_card(lang)),
        Err(e) => Err(failure_page(lang, &e)),
    }
}

fn unknown_or_failed(lang: Lang, e: &ApiError) -> HttpResponse {
    match e {
        ApiError::Rejected(Rejection::UnknownMember | Rejection::MemberErased) => {
            unknown_card(lang)
        }
        e => failure_page(lang, e),
    }
}

/// `GET /card/{fid}/{member_id}/export?…`: the member's data, as the HQ export.
pub async fn export(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (fid, mid) = path.into_inner();
    let (f, member, lang) = match member_of(&gw, &req, &fid, &mid).await {
        Ok(v) => v,
        Err(page) => {
            count("export", "refused");
            return page;
        }
    };
    match privacy::export_response(&gw, &f, &member).await {
        Ok(r) => {
            count("export", "served");
            tracing::info!(franchise = %f.id, member = %member, "member data exported from the card");
            r
        }
        Err(e) => {
            count("export", "failed");
            unknown_or_failed(lang, &e)
        }
    }
}

/// The confirmation form of the erasure.
fn erase_form(
    status: StatusCode,
    f: &Franchise,
    member: &MemberId,
    lang: Lang,
    req: &HttpRequest,
    error: Option<&str>,
) -> HttpResponse {
    let (base, q) = card_base(f, member, req);
    let error = error.map_or_else(String::new, |e| {
        format!(
            "<p class=\"error\" role=\"alert\" id=\"form-error\">{}</p>\n",
            escape(e)
        )
    });
    let body = format!(
        "<main class=\"card erase\" id=\"erase-page\">\n<header><p class=\"brand\" \
         id=\"franchise\">{name}</p></header>\n<section>\n<h1>{title}</h1>\n<p>{what}</p>\n\
         {error}<form id=\"erase-form\" method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"lang\" value=\"{lang}\">\n\
         <label class=\"check\"><input type=\"checkbox\" name=\"confirm\" id=\"confirm\" \
         value=\"yes\" required> {tick}</label>\n\
         <button type=\"submit\" id=\"erase-confirm\">{button}</button>\n</form>\n\
         <p><a id=\"back\" href=\"{back}\">{back_l}</a></p>\n</section>\n</main>",
        name = escape(&f.name),
        title = lang.pick("Effacer mes données", "Erase my data"),
        what = lang.pick(
            "Votre numéro, votre prénom, votre date d’anniversaire, votre adresse e-mail et \
             vos consentements seront effacés. Votre carte ne pourra plus être utilisée\u{a0}: \
             vos points et vos récompenses seront perdus. Cela ne peut pas être annulé.",
            "Your phone number, first name, birthday, e-mail address and consents will be \
             erased. Your card can no longer be used: your points and rewards are lost. This \
             cannot be undone."
        ),
        action = escape(&format!("{base}/erase?{q}")),
        lang = lang.code(),
        tick = lang.pick(
            "Je comprends et je veux effacer mes données",
            "I understand and want my data erased"
        ),
        button = lang.pick("Effacer mes données", "Erase my data"),
        back = escape(&format!("{base}?{q}&lang={}", lang.code())),
        back_l = lang.pick("Retour à ma carte", "Back to my card"),
    );
    page(
        status,
        lang,
        lang.pick("Effacer mes données", "Erase my data"),
        &css(),
        &body,
    )
}

/// `GET /card/{fid}/{member_id}/erase?…`: the confirmation form.
pub async fn confirm_erasure(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (fid, mid) = path.into_inner();
    match member_of(&gw, &req, &fid, &mid).await {
        Ok((f, member, lang)) => erase_form(StatusCode::OK, &f, &member, lang, &req, None),
        Err(page) => page,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct EraseForm {
    confirm: Option<String>,
    lang: Option<String>,
}

/// `POST /card/{fid}/{member_id}/erase?…`: erases, then says so.
pub async fn erase(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    form: Option<web::Form<EraseForm>>,
) -> HttpResponse {
    let form = form.map(|f| f.into_inner()).unwrap_or_default();
    let asked = Lang::of(&req, form.lang.as_deref());
    if cross_site(&req) {
        count("erasure", "refused");
        return error_page(
            StatusCode::FORBIDDEN,
            asked,
            asked.pick("Envoi refusé", "Refused"),
            asked.pick(
                "Ce formulaire ne peut être envoyé que depuis votre carte.",
                "This form can only be sent from your card.",
            ),
        );
    }
    let (fid, mid) = path.into_inner();
    let (f, member, _) = match member_of(&gw, &req, &fid, &mid).await {
        Ok(v) => v,
        Err(page) => {
            count("erasure", "refused");
            return page;
        }
    };
    let lang = asked;
    if form.confirm.as_deref() != Some("yes") {
        count("erasure", "unconfirmed");
        let message = lang.pick(
            "Cochez la case pour confirmer l’effacement.",
            "Tick the box to confirm the erasure.",
        );
        return erase_form(
            StatusCode::BAD_REQUEST,
            &f,
            &member,
            lang,
            &req,
            Some(message),
        );
    }
    let (status, result) =
        match privacy::submit_erasure(&gw, &f, &member, Some(gw.config.default_wait)).await {
            Ok(Erasure::Erased { .. }) => (StatusCode::OK, "erased"),
            Ok(Erasure::Accepted { .. }) => (StatusCode::ACCEPTED, "accepted"),
            Err(e) => {
                count("erasure", "failed");
                return unknown_or_failed(lang, &e);
            }
        };
    count("erasure", result);
    tracing::info!(franchise = %f.id, member = %member, result, "erasure asked from the card");
    erased_page(status, lang)
}

/// The page after an erasure: done (200) or under way (202).
fn erased_page(status: StatusCode, lang: Lang) -> HttpResponse {
    let message = if status == StatusCode::OK {
        lang.pick(
            "Vos données personnelles ont été effacées. Ce lien ne mène plus à aucune carte.",
            "Your personal data has been erased. This link no longer leads to a card.",
        )
    } else {
        lang.pick(
            "Votre demande est enregistrée\u{a0}: vos données personnelles seront effacées \
             dans quelques instants.",
            "Your request is recorded: your personal data will be erased in a moment.",
        )
    };
    let body = format!(
        "<main class=\"card erased\" id=\"erased\" data-status=\"{}\">\n<h1>{}</h1>\n<p>{}</p>\n\
         </main>",
        status.as_u16(),
        lang.pick("Données effacées", "Data erased"),
        escape(message),
    );
    page(
        status,
        lang,
        lang.pick("Données effacées", "Data erased"),
        &css(),
        &body,
    )
}
