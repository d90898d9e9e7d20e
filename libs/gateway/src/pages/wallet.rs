//! The card's wallet passes, next to the card page and authorised like it by its signed,
//! expiring link (README "Members without an app"):
//!
//! - `GET /card/{fid}/{member_id}/pass.pkpass?expires=…&sig=…`: an Apple Wallet pass
//!   (`application/vnd.apple.pkpass`) made from the member's current status at every download
//!   (so downloading again refreshes it); signed when a Pass Type ID certificate is
//!   configured, unsigned otherwise (what previews and tests check; Wallet refuses it).
//! - `GET /card/{fid}/{member_id}/google-wallet?expires=…&sig=…`: 303 to the "Save to Google
//!   Wallet" link of the same card, or a 503 page when Google Wallet is not configured.
//!
//! A forged or expired link is 403 and an unknown member 404, as for the card page. Counted in
//! `loyalty_wallet_passes_total{kind, result}`; the logs name no member.

use std::time::SystemTime;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::identity;
use loyalty_core::metrics::metrics;
use loyalty_core::model::Franchise;
use loyalty_domain::{MemberId, MemberStatus};
use loyalty_wallet::{CardPass, Language, Stamps, PKPASS_CONTENT_TYPE};
use tracing::Instrument as _;

use super::escape;
use super::member::{
    error_page, failure_page, metric_amount, refused_page, unknown_card, verified_member,
    CardQuery, Lang,
};
use crate::problem::ApiError;
use crate::state::Gateway;

fn count(kind: &str, result: &str) {
    metrics()
        .wallet_passes
        .with_label_values(&[kind, result])
        .inc();
}

/// The card link's query and language of `req`.
fn query_and_lang(req: &HttpRequest) -> (Option<web::Query<CardQuery>>, Lang) {
    let q = web::Query::<CardQuery>::from_query(req.query_string()).ok();
    let lang = Lang::of(req, q.as_ref().and_then(|q| q.lang.as_deref()));
    (q, lang)
}

/// What a pass of `member` shows now, or `None` if `f` has no such member (or it was erased).
async fn card_pass(
    gw: &Gateway,
    f: &Franchise,
    member: &MemberId,
    lang: Lang,
) -> Result<Option<CardPass>, ApiError> {
    let Some(cached) = gw
        .member_status(f, member)
        .await?
        .filter(|s| !crate::routes::privacy::status_is_erased(&s.json))
    else {
        return Ok(None);
    };
    let status: MemberStatus = serde_json::from_slice(&cached.json)
        .map_err(|e| ApiError::Internal(format!("a cached status does not parse: {e}")))?;
    let program = gw.program(f).await?;
    let next_tier = status.next_tier.as_ref().map(|next| {
        let left = metric_amount(
            lang,
            program.tier_qualification.metric,
            program.currency.as_str(),
            next.remaining,
        );
        match lang {
            Lang::Fr => format!("{}\u{a0}: encore {left}", next.name),
            Lang::En => format!("{}: {left} more", next.name),
        }
    });
    Ok(Some(CardPass {
        franchise_id: f.id.to_string(),
        franchise_name: f.name.clone(),
        member_id: member.to_string(),
        qr_token: identity::qr_token(&f.secret, member),
        points: status.points,
        tier: status.tier.clone(),
        next_tier,
        stamps: status.stamp_card_size.map(|size| Stamps {
            stamps: status.stamps,
            size,
        }),
        language: match lang {
            Lang::Fr => Language::Fr,
            Lang::En => Language::En,
        },
    }))
}

/// The card of a verified card link, or the page that says why there is none.
async fn verified_card(
    gw: &Gateway,
    req: &HttpRequest,
    path: (String, String),
) -> Result<CardPass, HttpResponse> {
    let (q, lang) = query_and_lang(req);
    let (fid, mid) = path;
    match verified_member(gw, q.as_deref(), &fid, &mid).await {
        Ok(Ok((f, member))) => match card_pass(gw, &f, &member, lang).await {
            Ok(Some(card)) => Ok(card),
            Ok(None) => Err(unknown_card(lang)),
            Err(e) => Err(failure_page(lang, &e)),
        },
        Ok(Err(why)) => Err(refused_page(lang, why)),
        Err(e) => Err(failure_page(lang, &e)),
    }
}

/// `GET /card/{fid}/{member_id}/pass.pkpass?expires=…&sig=…`: the Apple Wallet pass.
pub(super) async fn apple_pass(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let span = tracing::info_span!("wallet_pass", kind = "apple");
    async move {
        let card = match verified_card(&gw, &req, path.into_inner()).await {
            Ok(card) => card,
            Err(page) => return page,
        };
        let apple = &gw.config.wallet.apple;
        match apple.pkpass(&card, SystemTime::now()) {
            Ok(bytes) => {
                count("apple", if apple.signed() { "signed" } else { "unsigned" });
                HttpResponse::Ok()
                    .content_type(PKPASS_CONTENT_TYPE)
                    .insert_header((
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"card.pkpass\"",
                    ))
                    .insert_header((header::CACHE_CONTROL, "private, no-store"))
                    .body(bytes)
            }
            Err(e) => {
                count("apple", "failed");
                let (_, lang) = query_and_lang(&req);
                failure_page(lang, &ApiError::Internal(format!("wallet pass: {e}")))
            }
        }
    }
    .instrument(span)
    .await
}

/// `GET /card/{fid}/{member_id}/google-wallet?expires=…&sig=…`: 303 to the Google save link.
pub(super) async fn google_wallet(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let span = tracing::info_span!("wallet_pass", kind = "google");
    async move {
        let card = match verified_card(&gw, &req, path.into_inner()).await {
            Ok(card) => card,
            Err(page) => return page,
        };
        let (_, lang) = query_and_lang(&req);
        let Some(google) = &gw.config.wallet.google else {
            count("google", "not_configured");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                lang.pick("Google Wallet indisponible", "Google Wallet unavailable"),
                lang.pick(
                    "Cette carte ne peut pas encore être enregistrée dans Google Wallet. \
                     Votre carte reste disponible sur cette page.",
                    "This card cannot be saved to Google Wallet yet. \
                     Your card is still on this page.",
                ),
            );
        };
        match google.save_link(&card, SystemTime::now()) {
            Ok(link) => {
                count("google", "signed");
                HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, link))
                    .insert_header((header::CACHE_CONTROL, "private, no-store"))
                    .finish()
            }
            Err(e) => {
                count("google", "failed");
                failure_page(lang, &ApiError::Internal(format!("wallet link: {e}")))
            }
        }
    }
    .instrument(span)
    .await
}

/// The card page's wallet links, for the wallets that can take the card: Apple's when passes
/// are signed (Wallet refuses unsigned ones), Google's when it is configured. Relative to the
/// card's URL, with the link's own parameters.
pub(super) fn links(gw: &Gateway, member: &MemberId, lang: Lang, req: &HttpRequest) -> String {
    let wallet = &gw.config.wallet;
    if !wallet.apple.signed() && wallet.google.is_none() {
        return String::new();
    }
    let query = req.query_string();
    let mut out = String::from("<section class=\"wallets\" id=\"wallets\">\n");
    if wallet.apple.signed() {
        out.push_str(&format!(
            "<a id=\"apple-wallet\" class=\"wallet\" href=\"{}\">{}</a>\n",
            escape(&format!("{member}/pass.pkpass?{query}")),
            lang.pick("Ajouter à Apple Wallet", "Add to Apple Wallet"),
        ));
    }
    if wallet.google.is_some() {
        out.push_str(&format!(
            "<a id=\"google-wallet\" class=\"wallet\" href=\"{}\">{}</a>\n",
            escape(&format!("{member}/google-wallet?{query}")),
            lang.pick("Enregistrer dans Google Wallet", "Save to Google Wallet"),
        ));
    }
    out.push_str("</section>\n");
    out
}
