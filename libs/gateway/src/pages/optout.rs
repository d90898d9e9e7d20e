//! The opt-out link every offer carries (README "Privacy"):
//! `<public_url>/optout/{franchise_id}/{member_id}/{channel}?sig=…`, signed by
//! [`identity::opt_out_signature`] and valid for ever (a message read years later still
//! works). Server-rendered, no script, nothing fetched (the card page's strict policy), French
//! and English ([`Lang`]).
//!
//! - `GET`: a confirmation page with one button; it changes nothing (mail scanners and link
//!   previews fetch links).
//! - `POST` to the same URL (the page's form, or a mail client's RFC 8058 one-click POST with
//!   the body `List-Unsubscribe=One-Click`, whatever it is): withdraws the member's consent for
//!   the channel through the log (`SetConsent`, event id `optout.<member>.<channel>.<version>`,
//!   so that a double click or a retried POST is one event), then says it is done. A consent
//!   already withdrawn sends nothing and says the same.
//!
//! A forged signature is 403 before anything is looked up, so it tells nothing about whether
//! the member exists; an unknown franchise or channel is 404; a member erased (or not enrolled)
//! gets a neutral page: no message goes to them anyway. Each use is counted by
//! `loyalty_opt_outs_total{channel,result}` and logged without the member.

use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::command::HQ_STORE;
use loyalty_core::identity;
use loyalty_core::metrics::metrics;
use loyalty_core::model::Franchise;
use loyalty_domain::{Consent, EventId, FranchiseId, MemberId, StoreId};
use serde::Deserialize;
use tracing::Instrument;

use super::escape;
use super::member::{error_page, failure_page, page, Lang};
use crate::problem::ApiError;
use crate::routes::consent::{submit_consent, ConsentChange, ConsentSubmitted};
use crate::state::Gateway;

/// Registers `/optout/…` (outside `/v1`: a page, not an API operation).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routing::endpoint;
    cfg.service(
        web::scope("/optout")
            .wrap(from_fn(super::security_headers))
            .service(
                endpoint("/{fid}/{member_id}/{channel}")
                    .get(confirm_page)
                    .post(opt_out),
            ),
    );
}

/// The URL of `member`'s opt-out link for `channel` (`sms`, `email`), to put in a message.
pub fn opt_out_url(gw: &Gateway, f: &Franchise, member: &MemberId, channel: &str) -> String {
    format!(
        "{}{}",
        gw.config.public_url,
        identity::opt_out_path(&f.id, &f.secret, member, channel)
    )
}

#[derive(Debug, Deserialize)]
struct OptOutQuery {
    sig: Option<String>,
    lang: Option<String>,
}

/// A link whose signature holds: its franchise, member and channel.
struct Link {
    franchise: std::sync::Arc<Franchise>,
    member: MemberId,
    channel: &'static str,
    sig: String,
}

/// Why a link is refused.
enum Refused {
    /// An unknown franchise or channel, or not a link at all: 404.
    Unknown,
    /// A signature that does not match: 403.
    Forged,
}

/// The link of `path` and `q`, checked: the channel is one we make links for, the franchise
/// exists, and the signature is its own (before the member is looked at).
async fn verified(
    gw: &Gateway,
    path: &(String, String, String),
    q: Option<&OptOutQuery>,
) -> Result<Result<Link, Refused>, ApiError> {
    let (fid, mid, channel) = path;
    let Some(channel) = identity::OPT_OUT_CHANNELS
        .into_iter()
        .find(|c| *c == channel.as_str())
    else {
        return Ok(Err(Refused::Unknown));
    };
    let Ok(fid) = FranchiseId::parse(fid) else {
        return Ok(Err(Refused::Unknown));
    };
    let Some(franchise) = gw.franchise(&fid).await? else {
        return Ok(Err(Refused::Unknown));
    };
    let sig = q.and_then(|q| q.sig.clone()).unwrap_or_default();
    // An unparsable member id is no link of ours either: forged, like a wrong signature.
    let Ok(member) = MemberId::parse(mid) else {
        return Ok(Err(Refused::Forged));
    };
    if !identity::verify_opt_out(&franchise.secret, &member, channel, &sig) {
        return Ok(Err(Refused::Forged));
    }
    Ok(Ok(Link {
        franchise,
        member,
        channel,
        sig,
    }))
}

fn refused_page(lang: Lang, why: Refused) -> HttpResponse {
    match why {
        Refused::Unknown => error_page(
            StatusCode::NOT_FOUND,
            lang,
            lang.pick("Lien introuvable", "Link not found"),
            lang.pick(
                "Ce lien de désinscription ne mène nulle part.",
                "This unsubscribe link leads nowhere.",
            ),
        ),
        Refused::Forged => error_page(
            StatusCode::FORBIDDEN,
            lang,
            lang.pick("Lien non valide", "Invalid link"),
            lang.pick(
                "Ce lien de désinscription n’est pas valide. Utilisez celui du dernier message \
                 reçu.",
                "This unsubscribe link is not valid. Use the one in the latest message you \
                 received.",
            ),
        ),
    }
}

/// "by SMS" / "by e-mail".
fn by_channel(lang: Lang, channel: &str) -> &'static str {
    match channel {
        "sms" => lang.pick("par SMS", "by SMS"),
        _ => lang.pick("par e-mail", "by e-mail"),
    }
}

/// A page of the franchise's name, a heading and a paragraph (`extra`: more HTML, escaped).
fn message_page(
    lang: Lang,
    f: &Franchise,
    id: &str,
    title: &str,
    text: &str,
    extra: &str,
) -> HttpResponse {
    let body = format!(
        "<main class=\"card optout\" id=\"{id}\">\n<header><p class=\"brand\" \
         id=\"franchise\">{}</p></header>\n<section>\n<h2>{}</h2>\n<p id=\"message\">{}</p>\n\
         {extra}</section>\n</main>",
        escape(&f.name),
        escape(title),
        escape(text),
    );
    page(
        StatusCode::OK,
        lang,
        &format!("{} — {title}", f.name),
        &super::join::css(),
        &body,
    )
}

/// The member's consent, or `None` for a member not enrolled in this franchise, or erased.
async fn consent_of(gw: &Gateway, link: &Link) -> Result<Option<(Consent, u64)>, ApiError> {
    let state = gw
        .store
        .member(&link.member)
        .await?
        .filter(|s| s.franchise_id == link.franchise.id && s.erased_at.is_none());
    Ok(state.map(|s| (s.profile.consent, s.version)))
}

fn consented(consent: Consent, channel: &str) -> bool {
    match channel {
        "sms" => consent.sms,
        _ => consent.email,
    }
}

/// The page of a member who will receive nothing on the channel (erased, never enrolled): it
/// says so without saying why.
fn neutral_page(lang: Lang, link: &Link) -> HttpResponse {
    let by = by_channel(lang, link.channel);
    message_page(
        lang,
        &link.franchise,
        "optout-neutral",
        lang.pick("Désinscription", "Unsubscribe"),
        &match lang {
            Lang::Fr => format!(
                "Vous ne recevrez pas d’offres de {} {by}.",
                link.franchise.name
            ),
            Lang::En => format!(
                "You will not receive offers from {} {by}.",
                link.franchise.name
            ),
        },
        "",
    )
}

/// The span of an opt-out request: the channel and franchise, never the member.
fn span(path: &(String, String, String), method: &'static str) -> tracing::Span {
    tracing::info_span!("opt_out", method, channel = %path.2, franchise = %path.0)
}

/// `GET /optout/{fid}/{member_id}/{channel}?sig=…[&lang=fr|en]`: the confirmation form.
async fn confirm_page(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let path = path.into_inner();
    let q = web::Query::<OptOutQuery>::from_query(req.query_string()).ok();
    let lang = Lang::of(&req, q.as_ref().and_then(|q| q.lang.as_deref()));
    let run = async {
        let link = match verified(&gw, &path, q.as_deref()).await {
            Ok(Ok(l)) => l,
            Ok(Err(why)) => return refused_page(lang, why),
            Err(e) => return failure_page(lang, &e),
        };
        match consent_of(&gw, &link).await {
            Ok(Some(_)) => form_page(lang, &link),
            Ok(None) => neutral_page(lang, &link),
            Err(e) => failure_page(lang, &e),
        }
    };
    run.instrument(span(&path, "GET")).await
}

/// The confirmation form, posting `List-Unsubscribe=One-Click` to the link itself.
fn form_page(lang: Lang, link: &Link) -> HttpResponse {
    let by = by_channel(lang, link.channel);
    let action = format!(
        "/optout/{}/{}/{}?sig={}&lang={}",
        link.franchise.id,
        link.member,
        link.channel,
        link.sig,
        lang.code()
    );
    let form = format!(
        "<form id=\"optout-form\" method=\"post\" action=\"{}\">\n\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
         <button type=\"submit\" id=\"confirm\">{}</button>\n</form>\n",
        escape(&action),
        lang.pick("Me désinscrire", "Unsubscribe me"),
    );
    message_page(
        lang,
        &link.franchise,
        "optout-confirm",
        &match lang {
            Lang::Fr => format!("Ne plus recevoir les offres {by}"),
            Lang::En => format!("Stop receiving offers {by}"),
        },
        &match lang {
            Lang::Fr => format!(
                "Confirmez pour ne plus recevoir les offres de {} {by}.",
                link.franchise.name
            ),
            Lang::En => format!(
                "Confirm to stop receiving offers from {} {by}.",
                link.franchise.name
            ),
        },
        &form,
    )
}

/// `POST /optout/{fid}/{member_id}/{channel}?sig=…`: withdraws the consent (the body, the
/// page's form or RFC 8058's `List-Unsubscribe=One-Click`, is not needed), then says so.
async fn opt_out(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let path = path.into_inner();
    let q = web::Query::<OptOutQuery>::from_query(req.query_string()).ok();
    let lang = Lang::of(&req, q.as_ref().and_then(|q| q.lang.as_deref()));
    let run = async {
        let link = match verified(&gw, &path, q.as_deref()).await {
            Ok(Ok(l)) => l,
            Ok(Err(why)) => return refused_page(lang, why),
            Err(e) => return failure_page(lang, &e),
        };
        match withdraw(&gw, &link).await {
            Ok(Withdrawn::Done) => done_page(lang, &link),
            Ok(Withdrawn::NoMember) => neutral_page(lang, &link),
            Err(e) => failure_page(lang, &e),
        }
    };
    run.instrument(span(&path, "POST")).await
}

enum Withdrawn {
    /// The consent is withdrawn (now, or it already was).
    Done,
    /// No member to withdraw it from (erased, or not enrolled).
    NoMember,
}

/// Withdraws `link`'s consent through the log, unless already withdrawn; counted and logged.
async fn withdraw(gw: &Gateway, link: &Link) -> Result<Withdrawn, ApiError> {
    let Some((consent, version)) = consent_of(gw, link).await? else {
        return Ok(Withdrawn::NoMember);
    };
    let result = if consented(consent, link.channel) {
        let off = Some(false);
        let (sms, email) = match link.channel {
            "sms" => (off, None),
            _ => (None, off),
        };
        let change = ConsentChange {
            store: StoreId::parse(HQ_STORE)?,
            // The member's version: two clicks on one state are one event.
            event_id: EventId::parse(&format!(
                "optout.{}.{}.{version}",
                link.member, link.channel
            ))?,
            sms,
            email,
            email_address: None,
        };
        let deadline = Some(gw.config.default_wait);
        match submit_consent(gw, &link.franchise, &link.member, change, deadline).await {
            Ok(ConsentSubmitted::Applied { .. } | ConsentSubmitted::Accepted) => "withdrawn",
            // Erased between the read and the command: nothing goes to them anyway.
            Err(ApiError::Rejected(loyalty_domain::Rejection::MemberErased)) => {
                return Ok(Withdrawn::NoMember)
            }
            Err(e) => return Err(e),
        }
    } else {
        "already"
    };
    metrics()
        .opt_outs
        .with_label_values(&[link.channel, result])
        .inc();
    tracing::info!(franchise = %link.franchise.id, channel = link.channel, result, "opt-out");
    Ok(Withdrawn::Done)
}

/// "You will no longer receive …".
fn done_page(lang: Lang, link: &Link) -> HttpResponse {
    let by = by_channel(lang, link.channel);
    message_page(
        lang,
        &link.franchise,
        "optout-done",
        lang.pick("C’est fait", "Done"),
        &match lang {
            Lang::Fr => format!(
                "Vous ne recevrez plus les offres de {} {by}.",
                link.franchise.name
            ),
            Lang::En => format!(
                "You will no longer receive offers from {} {by}.",
                link.franchise.name
            ),
        },
        "",
    )
}
