//! The pages members see, with no app and no account: the member's card (`/card/…`, reached
//! through a signed, expiring link) and the store's printable enrolment poster with its QR
//! code. Both are server-rendered HTML that needs no script and fetches nothing: the style is
//! inline and allowed by its hash in the Content-Security-Policy (`default-src 'none'`), the QR
//! codes are inline SVG. French (the default) and English: `?lang=fr|en`, else the browser's
//! `Accept-Language`.
//!
//! - A store's enrolment URL is `<public_url>/join/<store_id>/<token>`, the token a MAC of the
//!   store id under the franchise's secret ([`identity::store_enrolment_token`]): stable (a
//!   printed poster never goes stale) and verifiable (a forged one is 404). It opens the
//!   self-enrolment form ([`super::join`]).
//! - A card link is `<public_url>/card/<franchise_id>/<member_id>?expires=<unix>&sig=<mac>`
//!   ([`identity::card_link_signature`]); a forged or expired one is 403, an unknown franchise
//!   or member 404, each as a page that says so (the 403 links to the franchise's sign-in page,
//!   [`super::signin`], where a one-time code gives a fresh link). The card's "My data" section
//!   (`pages::mydata`) downloads the member's export and asks for their erasure.

use std::collections::HashMap;
use std::fmt::Write as _;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use data_encoding::BASE64;
use loyalty_core::identity;
use loyalty_core::model::{Franchise, Role, Store};
use loyalty_domain::{
    Day, FranchiseId, LedgerEntry, LedgerKind, MemberId, MemberStatus, Program, StoreId,
    TierMetric, TierPeriod, TierQualification, Timestamp,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::escape;
use crate::problem::ApiError;
use crate::state::Gateway;

/// The style of the card and of the other member pages.
pub(super) const CARD_CSS: &str = include_str!("templates/card.css");
/// The style of the poster; `{{page}}` is its `@page` size.
const POSTER_CSS: &str = include_str!("templates/poster.css");

/// Entries of the activity list on the card.
const ACTIVITY: usize = 10;
/// How long a card link lasts unless asked otherwise, and at most (days).
pub const DEFAULT_LINK_DAYS: u32 = 30;
pub const MAX_LINK_DAYS: u32 = 90;

/// The pages' languages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

impl Lang {
    /// `fr` or `en`.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "fr" => Some(Lang::Fr),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }

    /// The language asked for by `?lang=`, else the first of ours in the request's
    /// `Accept-Language` (by quality), else French.
    pub fn of(req: &HttpRequest, asked: Option<&str>) -> Lang {
        if let Some(l) = asked.and_then(Lang::parse) {
            return l;
        }
        let header = req
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut best: Option<(f32, Lang)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").map(str::to_owned))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or_default();
            if let Some(l) = Lang::parse(primary) {
                if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, l));
                }
            }
        }
        best.map_or(Lang::Fr, |(_, l)| l)
    }

    pub(super) fn pick(self, fr: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Fr => fr,
            Lang::En => en,
        }
    }
}

/// A whole number with the language's thousands separator.
fn number(lang: Lang, n: u64) -> String {
    let digits = n.to_string();
    let sep = lang.pick("\u{202f}", ",");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push_str(sep);
        }
        out.push(c);
    }
    out
}

fn currency_symbol(code: &str) -> Option<&'static str> {
    Some(match code {
        "EUR" => "€",
        "USD" => "$",
        "GBP" => "£",
        "CHF" => "CHF",
        "CAD" => "$ CA",
        "JPY" => "¥",
        _ => return None,
    })
}

/// An amount in cents of `currency`, written the language's way (`12,50 €`, `€12.50`).
fn money(lang: Lang, currency: &str, cents: u64) -> String {
    let units = number(lang, cents / 100);
    let frac = cents % 100;
    let symbol = currency_symbol(currency);
    match (lang, symbol) {
        (Lang::Fr, Some(s)) => format!("{units},{frac:02}\u{a0}{s}"),
        (Lang::Fr, None) => format!("{units},{frac:02}\u{a0}{currency}"),
        (Lang::En, Some(s)) if s.len() <= 3 => format!("{s}{units}.{frac:02}"),
        (Lang::En, Some(s)) => format!("{s}\u{a0}{units}.{frac:02}"),
        (Lang::En, None) => format!("{currency}\u{a0}{units}.{frac:02}"),
    }
}

/// `n points` / `1 point`.
fn points(lang: Lang, n: u64) -> String {
    format!(
        "{}\u{a0}{}",
        number(lang, n),
        if n == 1 { "point" } else { "points" }
    )
}

/// A count of the tier metric (spend, points earned or visits).
pub(super) fn metric_amount(lang: Lang, metric: TierMetric, currency: &str, n: u64) -> String {
    match metric {
        TierMetric::SpendCents => money(lang, currency, n),
        TierMetric::PointsEarned => points(lang, n),
        TierMetric::Visits => format!(
            "{}\u{a0}{}",
            number(lang, n),
            match (lang, n == 1) {
                (Lang::Fr, true) => "visite",
                (Lang::Fr, false) => "visites",
                (Lang::En, true) => "visit",
                (Lang::En, false) => "visits",
            }
        ),
    }
}

/// What the program promises a new member, most tempting first: the signup bonus, then the
/// earn rule, then the stamp card.
pub fn promises(program: &Program, lang: Lang) -> Vec<String> {
    let mut out = Vec::new();
    let currency = program.currency.as_str();
    if program.signup_bonus > 0 {
        let n = points(lang, program.signup_bonus);
        out.push(match lang {
            Lang::Fr => format!("{n} offerts aujourd’hui"),
            Lang::En => format!("{n} today"),
        });
    }
    if program.points_per_unit > 0 {
        let p = points(lang, program.points_per_unit);
        let unit = money(lang, currency, 100);
        let unit = unit.replace(",00", "").replace(".00", "");
        out.push(match lang {
            Lang::Fr => format!("{p} par {unit} dépensé"),
            Lang::En => format!("{p} for every {unit} spent"),
        });
    }
    if let Some(card) = &program.stamp_card {
        let reward = program
            .rewards
            .iter()
            .find(|r| r.id == card.reward_id)
            .map_or("", |r| r.name.as_str());
        out.push(match lang {
            Lang::Fr => format!("Tous les {} passages\u{a0}: {reward}", card.size),
            Lang::En => format!("Every {} visits: {reward}", card.size),
        });
    }
    out
}

/// The Content-Security-Policy of a page whose only style is the inline `css`.
fn csp(css: &str) -> String {
    let hash = BASE64.encode(&Sha256::digest(css.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self' data:; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// A whole page: `body` (already escaped) under `title`, in `lang`, styled by `css` only.
pub(super) fn page(
    status: StatusCode,
    lang: Lang,
    title: &str,
    css: &str,
    body: &str,
) -> HttpResponse {
    let html = format!(
        "<!doctype html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <title>{title}</title>\n<style>{css}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n",
        lang = lang.code(),
        title = escape(title),
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, csp(css)))
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .insert_header(("X-Robots-Tag", "noindex"))
        .body(html)
}

/// A page that says why it cannot show what was asked, with `status`.
pub(super) fn error_page(
    status: StatusCode,
    lang: Lang,
    title: &str,
    message: &str,
) -> HttpResponse {
    let body = format!(
        "<main class=\"error\" id=\"error\" data-status=\"{}\">\n<h1>{}</h1>\n<p>{}</p>\n</main>",
        status.as_u16(),
        escape(title),
        escape(message)
    );
    page(status, lang, title, CARD_CSS, &body)
}

/// The error page of a failure of the platform (a backing service down…).
pub(super) fn failure_page(lang: Lang, e: &ApiError) -> HttpResponse {
    tracing::warn!(error = %e, "member page failed");
    error_page(
        e.status_code(),
        lang,
        lang.pick("Page indisponible", "Page unavailable"),
        lang.pick(
            "Cette page ne peut pas être affichée pour le moment. Réessayez dans un instant.",
            "This page cannot be shown right now. Please try again in a moment.",
        ),
    )
}

/// Registers `/card/…` and `/join/…` (outside `/v1`: pages, not API operations).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::routing::endpoint;
    cfg.service(
        web::scope("/card")
            .wrap(from_fn(super::security_headers))
            // Before the card's own path, which would take `sign-in` for a member id.
            .service(
                endpoint("/{fid}/sign-in")
                    .get(super::signin::form)
                    .post(super::signin::request_code),
            )
            .service(endpoint("/{fid}/sign-in/code").post(super::signin::confirm))
            .service(endpoint("/{fid}/{member_id}").get(card).post(card_consent))
            .service(endpoint("/{fid}/{member_id}/export").get(super::mydata::export))
            .service(
                endpoint("/{fid}/{member_id}/erase")
                    .get(super::mydata::confirm_erasure)
                    .post(super::mydata::erase),
            )
            .service(endpoint("/{fid}/{member_id}/pass.pkpass").get(super::wallet::apple_pass))
            .service(
                endpoint("/{fid}/{member_id}/google-wallet").get(super::wallet::google_wallet),
            ),
    )
    .service(
        web::scope("/join")
            .wrap(from_fn(super::security_headers))
            .service(
                endpoint("/{sid}/{token}")
                    .get(super::join::form)
                    .post(super::join::request_code),
            )
            .service(endpoint("/{sid}/{token}/code").post(super::join::confirm)),
    );
}

// ---------------------------------------------------------------------------------------------
// Links

/// The URL a store's enrolment QR code opens.
pub fn enrolment_url(gw: &Gateway, f: &Franchise, store: &StoreId) -> String {
    format!(
        "{}/join/{}/{}",
        gw.config.public_url,
        store,
        identity::store_enrolment_token(&f.secret, store)
    )
}

/// Unix seconds now.
pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A link to `member`'s card valid for `days` from now, and when it expires (Unix seconds).
pub fn card_link(gw: &Gateway, f: &Franchise, member: &MemberId, days: u32) -> (String, i64) {
    let expires = now_secs() + i64::from(days) * 86_400;
    let sig = identity::card_link_signature(&f.secret, member, expires);
    (
        format!(
            "{}/card/{}/{}?expires={expires}&sig={sig}",
            gw.config.public_url, f.id, member
        ),
        expires,
    )
}

// ---------------------------------------------------------------------------------------------
// The card page

#[derive(Debug, Deserialize)]
pub(super) struct CardQuery {
    expires: Option<String>,
    sig: Option<String>,
    pub(super) lang: Option<String>,
}

/// Why a card link is refused.
pub(super) enum Refused {
    /// Not a link we make, or of no franchise or member we know: 404.
    Unknown,
    /// A signature that does not match: 403.
    Forged,
    /// Past its expiry: 403.
    Expired,
}

/// The status, title and message of a refused card link's page.
fn refused_words(lang: Lang, why: &Refused) -> (StatusCode, &'static str, &'static str) {
    match why {
        Refused::Unknown => (
            StatusCode::NOT_FOUND,
            lang.pick("Carte introuvable", "Card not found"),
            lang.pick(
                "Ce lien ne mène à aucune carte. Demandez un nouveau lien en caisse.",
                "This link leads to no card. Ask for a new link at the till.",
            ),
        ),
        Refused::Forged => (
            StatusCode::FORBIDDEN,
            lang.pick("Lien non valide", "Invalid link"),
            lang.pick(
                "Ce lien n’est pas valide. Demandez un nouveau lien en caisse.",
                "This link is not valid. Ask for a new link at the till.",
            ),
        ),
        Refused::Expired => (
            StatusCode::FORBIDDEN,
            lang.pick("Lien expiré", "Link expired"),
            lang.pick(
                "Ce lien a expiré. Demandez un nouveau lien en caisse.",
                "This link has expired. Ask for a new link at the till.",
            ),
        ),
    }
}

pub(super) fn refused_page(lang: Lang, why: Refused) -> HttpResponse {
    let (status, title, message) = refused_words(lang, &why);
    error_page(status, lang, title, message)
}

/// A refused card link's page, with (for a forged or expired link of a franchise) a link to
/// its sign-in page ([`super::signin`]), where the member gets a fresh link with a one-time
/// code.
fn refused_card_page(lang: Lang, why: Refused, fid: &str) -> HttpResponse {
    let fid = match (&why, FranchiseId::parse(fid)) {
        (Refused::Forged | Refused::Expired, Ok(fid)) => fid,
        _ => return refused_page(lang, why),
    };
    let (status, title, message) = refused_words(lang, &why);
    let body = format!(
        "<main class=\"error\" id=\"error\" data-status=\"{}\">\n<h1>{}</h1>\n<p>{}</p>\n\
         <p><a id=\"sign-in\" href=\"{}\">{}</a></p>\n</main>",
        status.as_u16(),
        escape(title),
        escape(message),
        escape(&format!(
            "{}?lang={}",
            super::signin::sign_in_path(&fid),
            lang.code()
        )),
        lang.pick(
            "Ou recevez un nouveau lien avec un code par SMS",
            "Or get a new link with a code by text"
        ),
    );
    page(status, lang, title, CARD_CSS, &body)
}

/// `GET /card/{fid}/{member_id}?expires=…&sig=…[&lang=fr|en]`: the member's card.
async fn card(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let q = web::Query::<CardQuery>::from_query(req.query_string()).ok();
    let lang = Lang::of(&req, q.as_ref().and_then(|q| q.lang.as_deref()));
    let (fid, mid) = path.into_inner();
    match verified_member(&gw, q.as_deref(), &fid, &mid).await {
        Ok(Ok((f, member))) => match card_page(&gw, &f, &member, lang, &req).await {
            Ok(Some(r)) => r,
            Ok(None) => refused_page(lang, Refused::Unknown),
            Err(e) => failure_page(lang, &e),
        },
        Ok(Err(why)) => refused_card_page(lang, why, &fid),
        Err(e) => failure_page(lang, &e),
    }
}

/// `POST /card/{fid}/{member_id}?expires=…&sig=…`: the card's consent form
/// ([`super::preferences`]), authorised by the card link; 303 back to the card.
async fn card_consent(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<(String, String)>,
    form: Option<web::Form<super::preferences::ConsentForm>>,
) -> HttpResponse {
    let q = web::Query::<CardQuery>::from_query(req.query_string()).ok();
    let lang = Lang::of(&req, q.as_ref().and_then(|q| q.lang.as_deref()));
    let (fid, mid) = path.into_inner();
    match verified_member(&gw, q.as_deref(), &fid, &mid).await {
        Ok(Ok((f, member))) => super::preferences::save(&gw, &f, &member, lang, &req, form).await,
        Ok(Err(why)) => refused_page(lang, why),
        Err(e) => failure_page(lang, &e),
    }
}

/// The page of a card link that leads to no card (404).
pub(super) fn unknown_card(lang: Lang) -> HttpResponse {
    refused_page(lang, Refused::Unknown)
}

/// The franchise and member a card link names, if its signature holds and it has not expired.
pub(super) async fn verified_member(
    gw: &Gateway,
    q: Option<&CardQuery>,
    fid: &str,
    mid: &str,
) -> Result<Result<(std::sync::Arc<Franchise>, MemberId), Refused>, ApiError> {
    let (Ok(fid), Ok(member)) = (FranchiseId::parse(fid), MemberId::parse(mid)) else {
        return Ok(Err(Refused::Unknown));
    };
    let Some(q) = q else {
        return Ok(Err(Refused::Unknown));
    };
    let (Some(expires), Some(sig)) = (
        q.expires.as_deref().and_then(|e| e.parse::<i64>().ok()),
        q.sig.as_deref(),
    ) else {
        return Ok(Err(Refused::Unknown));
    };
    let Some(f) = gw.franchise(&fid).await? else {
        return Ok(Err(Refused::Unknown));
    };
    if !identity::verify_card_link(&f.secret, &member, expires, sig) {
        return Ok(Err(Refused::Forged));
    }
    if expires < now_secs() {
        return Ok(Err(Refused::Expired));
    }
    Ok(Ok((f, member)))
}

/// What a ledger entry was, for the member.
fn activity_label(lang: Lang, e: &LedgerEntry, program: &Program) -> String {
    let reward_name = |id: &str| {
        program
            .rewards
            .iter()
            .find(|r| r.id.as_str() == id)
            .map_or_else(|| id.to_owned(), |r| r.name.clone())
    };
    match (e.kind, e.detail.as_str()) {
        (LedgerKind::Earn, "signup_bonus") => {
            lang.pick("Bonus de bienvenue", "Welcome bonus").into()
        }
        (LedgerKind::Earn, _) => lang.pick("Achat", "Purchase").into(),
        (LedgerKind::Redeem, d) if d.starts_with("cancel:") => {
            lang.pick("Échange annulé", "Redemption cancelled").into()
        }
        (LedgerKind::Redeem, d) if d.starts_with("code_expired:") => lang
            .pick("Code expiré, rendu", "Code expired, given back")
            .into(),
        (LedgerKind::Redeem, d) => {
            let (what, id) = match d.split_once(':') {
                Some(("voucher", id)) => (lang.pick("Bon utilisé", "Voucher used"), id),
                Some(("auto_voucher", id)) => {
                    (lang.pick("Bon automatique", "Automatic voucher"), id)
                }
                Some((_, id)) => (lang.pick("Récompense", "Reward"), id),
                None => (lang.pick("Récompense", "Reward"), d),
            };
            format!("{what}{} {}", lang.pick("\u{a0}:", ":"), reward_name(id))
        }
        (LedgerKind::Expire, _) => lang.pick("Points expirés", "Points expired").into(),
        (LedgerKind::Adjust, _) => lang.pick("Ajustement", "Adjustment").into(),
        (LedgerKind::Reverse, _) => lang.pick("Remboursement", "Refund").into(),
        (LedgerKind::Tier, _) => match &e.tier_change {
            Some(c) => format!(
                "{}{} {}",
                lang.pick("Niveau", "Tier"),
                lang.pick("\u{a0}:", ":"),
                c.to
            ),
            None => lang.pick("Niveau", "Tier").into(),
        },
    }
}

/// A local time of day written the language's way (`14h05`, `14:05`).
fn time_words(lang: Lang, program: &Program, at: Timestamp) -> String {
    let minutes = program.time_zone.local(at).0.rem_euclid(86_400_000) / 60_000;
    let (h, m) = (minutes / 60, minutes % 60);
    match lang {
        Lang::Fr => format!("{h:02}h{m:02}"),
        Lang::En => format!("{h:02}:{m:02}"),
    }
}

/// The member's outstanding redemption codes (README "Redemption codes"), each as a QR code
/// for the till to scan, its text to type, its reward and its expiry.
fn redemption_codes(
    b: &mut String,
    lang: Lang,
    program: &Program,
    status: &MemberStatus,
) -> Result<(), ApiError> {
    if status.redemption_codes.is_empty() {
        return Ok(());
    }
    let _ = write!(
        b,
        "<section class=\"codes\">\n<h2>{}</h2>\n<ul id=\"redemption-codes\">\n",
        lang.pick("Mes codes de retrait", "My reward codes")
    );
    for c in &status.redemption_codes {
        let reward = program
            .reward(&c.reward_id)
            .map_or_else(|| c.reward_id.to_string(), |r| r.name.clone());
        let until = match lang {
            Lang::Fr => format!(
                "Valable jusqu’au {} à {}",
                date(lang, program, c.expires_at),
                time_words(lang, program, c.expires_at)
            ),
            Lang::En => format!(
                "Valid until {} at {}",
                date(lang, program, c.expires_at),
                time_words(lang, program, c.expires_at)
            ),
        };
        let label = match lang {
            Lang::Fr => format!("QR code du retrait\u{a0}: {reward}"),
            Lang::En => format!("QR code of the reward: {reward}"),
        };
        let _ = writeln!(
            b,
            "<li class=\"redemption-code\" data-code=\"{}\" data-reward=\"{}\" \
             data-expires-at=\"{}\"><strong>{}</strong>\n{}\n<code>{}</code>\n\
             <p class=\"expiry\">{}</p></li>",
            escape(&c.code),
            escape(c.reward_id.as_str()),
            c.expires_at.0,
            escape(&reward),
            crate::qr::inline_svg(&c.code, "code", &label)?,
            escape(&c.code),
            escape(&until),
        );
    }
    let _ = write!(
        b,
        "</ul>\n<p class=\"hint\">{}</p>\n</section>\n",
        lang.pick(
            "Présentez ce code en caisse pour recevoir la récompense\u{a0}: il ne sert qu’une fois. \
             S’il n’est pas utilisé à temps, vos points (ou votre bon) vous sont rendus.",
            "Show this code at the till to receive the reward: it works once. \
             If it is not used in time, your points (or voucher) come back."
        )
    );
    Ok(())
}

/// The span tiers are qualified over, in words: "over a rolling 365 days", "this year".
fn span_words(lang: Lang, q: &TierQualification) -> String {
    match (q.period, lang) {
        (TierPeriod::Rolling, Lang::Fr) => {
            format!("sur {}\u{a0}jours glissants", q.window_days.unwrap_or(1))
        }
        (TierPeriod::Rolling, Lang::En) => {
            format!("over a rolling {} days", q.window_days.unwrap_or(1))
        }
        (TierPeriod::Month, _) => lang.pick("ce mois-ci", "this month").into(),
        (TierPeriod::Quarter, _) => lang.pick("ce trimestre", "this quarter").into(),
        (TierPeriod::Year, _) => lang.pick("cette année", "this year").into(),
    }
}

/// A day written the language's way.
fn date(lang: Lang, program: &Program, at: Timestamp) -> String {
    day_words(lang, program.time_zone.day(at))
}

/// A calendar day written the language's way.
fn day_words(lang: Lang, day: Day) -> String {
    let (y, m, d) = day.ymd();
    match lang {
        Lang::Fr => format!("{d:02}/{m:02}/{y}"),
        Lang::En => format!("{y}-{m:02}-{d:02}"),
    }
}

/// The stamp card: `size` stamps in rows of 5, the first `stamps` filled.
fn stamp_card(size: u32, stamps: u32, label: &str) -> String {
    let per_row = size.min(5);
    let rows = size.div_ceil(5);
    let (w, h) = (per_row * 48, rows * 48);
    let mut svg = format!(
        "<svg id=\"stamp-card\" class=\"stamps\" role=\"img\" aria-label=\"{}\" \
         viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">",
        escape(label)
    );
    for i in 0..size {
        let (cx, cy) = ((i % 5) * 48 + 24, (i / 5) * 48 + 24);
        let filled = i < stamps;
        let _ = write!(
            svg,
            "<circle class=\"stamp{}\" cx=\"{cx}\" cy=\"{cy}\" r=\"19\"/>",
            if filled { " filled" } else { "" }
        );
        if filled {
            let _ = write!(
                svg,
                "<path class=\"tick\" d=\"M{} {}l6 6l11 -13\"/>",
                cx - 9,
                cy + 1
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The card of `member` of `f`, or `None` if `f` has no such member.
async fn card_page(
    gw: &Gateway,
    f: &Franchise,
    member: &MemberId,
    lang: Lang,
    req: &HttpRequest,
) -> Result<Option<HttpResponse>, ApiError> {
    // An erased member has no card any more (README "Privacy").
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
    let entries = gw.store.ledger(member, None, ACTIVITY).await?;
    let stores: HashMap<StoreId, String> = gw
        .store
        .stores_of(&f.id)
        .await?
        .into_iter()
        .map(|s| (s.id, s.name))
        .collect();
    let currency = program.currency.as_str();
    let mut b = String::with_capacity(16 * 1024);

    // The language switch keeps the link's own parameters (a relative URL: the same path,
    // whatever prefix a proxy in front adds).
    let here = |l: Lang| {
        let params: Vec<String> = req
            .query_string()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("lang="))
            .map(str::to_owned)
            .chain([format!("lang={}", l.code())])
            .collect();
        format!("?{}", params.join("&"))
    };
    let _ = write!(
        b,
        "<main id=\"card\" class=\"card\" data-member=\"{}\" data-points=\"{}\" \
         data-version=\"{}\">\n<header>\n<p class=\"brand\" id=\"franchise\">{}</p>\n\
         <nav class=\"lang\" id=\"lang\"><a href=\"{}\" hreflang=\"fr\"{}>FR</a> \
         <a href=\"{}\" hreflang=\"en\"{}>EN</a></nav>\n</header>\n",
        escape(member.as_str()),
        status.points,
        status.version,
        escape(&f.name),
        escape(&here(Lang::Fr)),
        if lang == Lang::Fr {
            " aria-current=\"true\""
        } else {
            ""
        },
        escape(&here(Lang::En)),
        if lang == Lang::En {
            " aria-current=\"true\""
        } else {
            ""
        },
    );

    // Balance and tier.
    let _ = write!(
        b,
        "<section class=\"balance\">\n<h1>{}</h1>\n\
         <p class=\"points\"><span id=\"balance\" data-points=\"{p}\">{}</span> \
         <span class=\"unit\">{}</span></p>\n",
        lang.pick("Ma carte de fidélité", "My loyalty card"),
        number(lang, status.points),
        if status.points == 1 {
            "point"
        } else {
            "points"
        },
        p = status.points,
    );
    let _ = writeln!(
        b,
        "<p class=\"tier\">{} <strong id=\"tier\">{}</strong></p>",
        lang.pick("Niveau", "Tier"),
        escape(&status.tier)
    );
    if let Some(next) = &status.next_tier {
        let metric = program.tier_qualification.metric;
        let current = program
            .tiers
            .iter()
            .find(|t| t.name == status.tier)
            .map_or(0, |t| t.threshold);
        let target = program
            .tiers
            .iter()
            .find(|t| t.name == next.name)
            .map_or(next.remaining, |t| t.threshold);
        let reached = target.saturating_sub(next.remaining);
        let span = target.saturating_sub(current).max(1);
        let value = reached.saturating_sub(current).min(span);
        let over = span_words(lang, &program.tier_qualification);
        let _ = write!(
            b,
            "<div class=\"next-tier\" id=\"next-tier\" data-remaining=\"{}\">\n\
             <progress id=\"tier-progress\" max=\"{span}\" value=\"{value}\">{}\u{a0}%</progress>\n\
             <p>{}</p>\n</div>\n",
            next.remaining,
            value * 100 / span,
            escape(&match lang {
                Lang::Fr => format!(
                    "Encore {} pour atteindre {} ({over}).",
                    metric_amount(lang, metric, currency, next.remaining),
                    next.name
                ),
                Lang::En => format!(
                    "{} more to reach {} ({over}).",
                    metric_amount(lang, metric, currency, next.remaining),
                    next.name
                ),
            }),
        );
    } else {
        let _ = writeln!(
            b,
            "<p class=\"top-tier\">{}</p>",
            lang.pick(
                "Vous êtes au niveau le plus élevé.",
                "You are at the top tier."
            )
        );
    }
    if let Some(due) = &status.tier_downgrade {
        let day =
            Day::parse_iso(&due.date).map_or_else(|| due.date.clone(), |d| day_words(lang, d));
        let _ = writeln!(
            b,
            "<p class=\"tier-downgrade\" id=\"tier-downgrade\" data-date=\"{}\">{}</p>",
            escape(&due.date),
            escape(&match lang {
                Lang::Fr => format!(
                    "Votre niveau passera à {} le {day}, sauf si vous le requalifiez d'ici là.",
                    due.tier
                ),
                Lang::En => format!(
                    "Your tier becomes {} on {day} unless you qualify again before.",
                    due.tier
                ),
            })
        );
    }
    b.push_str("</section>\n");

    // The member's QR code for the till.
    let token = identity::qr_token(&f.secret, member);
    let _ = write!(
        b,
        "<section class=\"qr\" id=\"member-qr\" data-token=\"{}\">\n<h2>{}</h2>\n{}\n\
         <p class=\"hint\">{}</p>\n</section>\n",
        escape(&token),
        lang.pick("À présenter en caisse", "Show at the till"),
        crate::qr::inline_svg(
            &token,
            "code",
            lang.pick("QR code de ma carte", "My card's QR code")
        )?,
        lang.pick(
            "Le caissier scanne ce code pour créditer vos points.",
            "The cashier scans this code to add your points."
        ),
    );
    b.push_str(&super::wallet::links(gw, member, lang, req));

    // The stamp card.
    if let Some(size) = status.stamp_card_size {
        let stamps = status.stamps.min(size);
        let reward = program
            .stamp_card
            .as_ref()
            .and_then(|c| program.rewards.iter().find(|r| r.id == c.reward_id))
            .map_or("", |r| r.name.as_str());
        let label = match (lang, stamps == 1) {
            (Lang::Fr, true) => format!("1 tampon sur {size}"),
            (Lang::Fr, false) => format!("{stamps} tampons sur {size}"),
            (Lang::En, true) => format!("1 stamp of {size}"),
            (Lang::En, false) => format!("{stamps} stamps of {size}"),
        };
        let _ = write!(
            b,
            "<section class=\"stamp-card\" id=\"stamps\" data-stamps=\"{stamps}\" \
             data-size=\"{size}\">\n<h2>{}</h2>\n{}\n<p>{}</p>\n</section>\n",
            lang.pick("Carte de tampons", "Stamp card"),
            stamp_card(size, stamps, &label),
            escape(&match lang {
                Lang::Fr => format!(
                    "{label}\u{a0}: encore {} avant\u{a0}: {reward}.",
                    size - stamps
                ),
                Lang::En => format!("{label}: {} more for: {reward}.", size - stamps),
            }),
        );
    }

    // Vouchers held.
    let reward_name = |id: &loyalty_domain::RewardId| {
        program
            .rewards
            .iter()
            .find(|r| &r.id == id)
            .map_or_else(|| id.to_string(), |r| r.name.clone())
    };
    if !status.vouchers.is_empty() {
        let _ = write!(
            b,
            "<section class=\"vouchers\">\n<h2>{}</h2>\n<ul id=\"vouchers\">\n",
            lang.pick("Mes bons", "My vouchers")
        );
        for v in &status.vouchers {
            let _ = writeln!(
                b,
                "<li data-reward=\"{}\" data-count=\"{}\"><strong>{}</strong> × {}</li>",
                escape(v.reward_id.as_str()),
                v.count,
                escape(&reward_name(&v.reward_id)),
                v.count
            );
        }
        let _ = write!(
            b,
            "</ul>\n<p class=\"hint\">{}</p>\n</section>\n",
            lang.pick(
                "Demandez-le en caisse\u{a0}: il est lié à votre carte.",
                "Ask for it at the till: it is on your card."
            )
        );
    }

    redemption_codes(&mut b, lang, &program, &status)?;

    // The reward catalogue.
    if !program.rewards.is_empty() {
        let _ = write!(
            b,
            "<section class=\"rewards\">\n<h2>{}</h2>\n<ul id=\"rewards\">\n",
            lang.pick("Récompenses", "Rewards")
        );
        for r in &program.rewards {
            let available = status.rewards_available.contains(&r.id);
            let _ = writeln!(
                b,
                "<li data-reward=\"{}\" data-cost=\"{}\" data-available=\"{available}\" \
                 class=\"{}\"><span class=\"name\">{}</span> <span class=\"cost\">{}</span>{}</li>",
                escape(r.id.as_str()),
                r.cost_points,
                if available { "available" } else { "locked" },
                escape(&r.name),
                points(lang, r.cost_points),
                if available {
                    format!(
                        " <span class=\"badge\">{}</span>",
                        lang.pick("disponible", "available")
                    )
                } else {
                    String::new()
                }
            );
        }
        b.push_str("</ul>\n</section>\n");
    }

    // Recent activity.
    let _ = write!(
        b,
        "<section class=\"activity\">\n<h2>{}</h2>\n",
        lang.pick("Activité récente", "Recent activity")
    );
    if entries.is_empty() {
        let _ = writeln!(
            b,
            "<p id=\"activity-empty\">{}</p>",
            lang.pick("Aucune activité pour l’instant.", "No activity yet.")
        );
    } else {
        b.push_str("<ol id=\"activity\">\n");
        for e in &entries {
            let store = stores.get(&e.store_id).map_or("", String::as_str);
            let _ = writeln!(
                b,
                "<li data-seq=\"{}\" data-points=\"{}\"><span class=\"when\">{}</span> \
                 <span class=\"what\">{}</span> <span class=\"where\">{}</span> \
                 <span class=\"delta {}\">{}{}</span></li>",
                e.seq,
                e.points,
                date(lang, &program, e.at),
                escape(&activity_label(lang, e, &program)),
                escape(store),
                if e.points < 0 { "minus" } else { "plus" },
                if e.points < 0 { "−" } else { "+" },
                number(lang, e.points.unsigned_abs()),
            );
        }
        b.push_str("</ol>\n");
    }
    b.push_str("</section>\n");
    // The consent settings, from the stored profile (the till's status holds none).
    if let Some(state) = gw.store.member(member).await? {
        b.push_str(&super::preferences::section(lang, &state, req));
    }
    b.push_str(&super::mydata::section(f, member, lang, req));
    let _ = write!(
        b,
        "<footer><p>{}</p></footer>\n</main>",
        lang.pick(
            "Ce lien est personnel\u{a0}: ne le partagez pas.",
            "This link is personal: do not share it."
        )
    );
    let title = format!(
        "{} — {}",
        f.name,
        lang.pick("Ma carte de fidélité", "My loyalty card")
    );
    let css = format!("{CARD_CSS}{}", super::preferences::CSS);
    Ok(Some(page(StatusCode::OK, lang, &title, &css, &b)))
}

// ---------------------------------------------------------------------------------------------
// Enrolment: the poster and the page its QR code opens

/// A poster's paper size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paper {
    A5,
    A6,
}

impl Paper {
    pub fn parse(s: &str) -> Option<Paper> {
        match s {
            "a5" => Some(Paper::A5),
            "a6" => Some(Paper::A6),
            _ => None,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Paper::A5 => "a5",
            Paper::A6 => "a6",
        }
    }
}

/// The printable poster of `store`: the franchise's and store's names, the program's promise
/// and the store's enrolment QR code, on one A5 or A6 sheet.
pub async fn poster(
    gw: &Gateway,
    f: &Franchise,
    store: &Store,
    lang: Lang,
    paper: Paper,
) -> Result<HttpResponse, ApiError> {
    let program = gw.program(f).await?;
    let url = enrolment_url(gw, f, &store.id);
    let promises = promises(&program, lang);
    let (headline, more) = promises
        .split_first()
        .map_or(("", &[][..]), |(h, m)| (h.as_str(), m));
    let mut b = String::with_capacity(16 * 1024);
    let _ = write!(
        b,
        "<main class=\"sheet {}\" id=\"poster\" data-url=\"{}\">\n\
         <p class=\"brand\" id=\"franchise\">{}</p>\n\
         <h1 id=\"promise\">{}</h1>\n<ul class=\"more\">",
        paper.code(),
        escape(&url),
        escape(&f.name),
        escape(headline),
    );
    for m in more {
        let _ = write!(b, "<li>{}</li>", escape(m));
    }
    let _ = write!(
        b,
        "</ul>\n<div class=\"code\" id=\"enrolment-qr\">{}</div>\n\
         <p class=\"cta\">{}</p>\n<p class=\"how\">{}</p>\n\
         <p class=\"store\" id=\"store\">{}</p>\n</main>",
        crate::qr::inline_svg(
            &url,
            "qr",
            lang.pick(
                "QR code d’inscription au programme",
                "QR code to join the program"
            )
        )?,
        lang.pick(
            "Scannez pour rejoindre le programme",
            "Scan to join the program"
        ),
        lang.pick(
            "Sans application\u{a0}: votre carte s’ouvre dans le navigateur de votre téléphone. \
             Ou donnez votre numéro en caisse.",
            "No app needed: your card opens in your phone’s browser. Or give your number at \
             the till."
        ),
        escape(&store.name),
    );
    let size = match paper {
        Paper::A5 => "A5 portrait",
        Paper::A6 => "A6 portrait",
    };
    let css = POSTER_CSS.replace("{{page}}", size);
    let title = format!("{} — {}", f.name, store.name);
    Ok(page(StatusCode::OK, lang, &title, &css, &b))
}

/// `?lang=fr|en&size=a5|a6` of a poster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosterQuery {
    pub lang: Option<String>,
    pub size: Option<String>,
}

impl PosterQuery {
    /// The language and paper asked for (400 `invalid-query` for others).
    pub fn resolve(&self, req: &HttpRequest) -> Result<(Lang, Paper), ApiError> {
        let lang = match self.lang.as_deref() {
            None => Lang::of(req, None),
            Some(l) => Lang::parse(l).ok_or_else(|| {
                ApiError::InvalidQuery(format!("lang must be fr or en, got {l:?}"))
            })?,
        };
        let paper = match self.size.as_deref() {
            None => Paper::A5,
            Some(s) => Paper::parse(s).ok_or_else(|| {
                ApiError::InvalidQuery(format!("size must be a5 or a6, got {s:?}"))
            })?,
        };
        Ok((lang, paper))
    }
}

/// `GET /dashboard/stores/{sid}/poster`: the poster of a store of the session's franchise
/// (the dashboard's HQ session; without one, to the sign-in form).
pub async fn dashboard_poster(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    q: Result<web::Query<PosterQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let f = match super::session(&gw, &req).await {
        Ok(f) => f,
        Err(ApiError::Unauthorized) => return Ok(super::see_other().finish()),
        Err(e) => return Err(e),
    };
    let q = q.map_err(|e| ApiError::InvalidQuery(format!("query string: {e}")))?;
    let (lang, paper) = q.resolve(&req)?;
    let store = franchise_store(&gw, &f, &path).await?;
    poster(&gw, &f, &store, lang, paper).await
}

/// The store `sid` of `f`; any other is 404.
pub async fn franchise_store(gw: &Gateway, f: &Franchise, sid: &str) -> Result<Store, ApiError> {
    let not_found = || ApiError::NotFound("no such store in this franchise".into());
    let sid = StoreId::parse(sid).map_err(|_| not_found())?;
    match gw.store.store(&sid).await? {
        Some(s) if s.franchise_id == f.id => Ok(s),
        _ => Err(not_found()),
    }
}

/// The franchise and store of an API request on `/v1/franchises/{fid}/stores/{sid}/…`: the
/// franchise's HQ key or that store's key. Another franchise's key, or a store that is not
/// the franchise's, is 404; another store's key of the franchise is 403.
pub async fn caller_store(
    gw: &Gateway,
    req: &HttpRequest,
    fid: &str,
    sid: &str,
) -> Result<(std::sync::Arc<Franchise>, Store), ApiError> {
    let p = gw
        .authorize(req, &[Role::Hq, Role::HqReadOnly, Role::Store])
        .await?;
    let not_found = || ApiError::NotFound("no such franchise".into());
    let fid = FranchiseId::parse(fid).map_err(|_| not_found())?;
    if p.franchise_id.as_ref() != Some(&fid) {
        return Err(not_found());
    }
    let f = gw.franchise(&fid).await?.ok_or_else(not_found)?;
    let store = franchise_store(gw, &f, sid).await?;
    if p.role == Role::Store && p.store_id.as_ref() != Some(&store.id) {
        return Err(ApiError::Forbidden(
            "a store key acts for its own store only",
        ));
    }
    Ok((f, store))
}

/// The franchise, store and program of an enrolment URL `/join/{sid}/{token}`; `None` for a
/// forged token or a store we do not know (404).
pub(super) async fn enrolment_store(
    gw: &Gateway,
    sid: &str,
    token: &str,
) -> Result<Option<(std::sync::Arc<Franchise>, Store, std::sync::Arc<Program>)>, ApiError> {
    let Ok(sid) = StoreId::parse(sid) else {
        return Ok(None);
    };
    let Some(store) = gw.store.store(&sid).await? else {
        return Ok(None);
    };
    let Some(f) = gw.franchise(&store.franchise_id).await? else {
        return Ok(None);
    };
    if !identity::verify_store_enrolment_token(&f.secret, &sid, token) {
        return Ok(None);
    }
    let program = gw.program(&f).await?;
    Ok(Some((f, store, program)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_follow_the_query_then_accept_language() {
        let req = |al: &str| {
            actix_web::test::TestRequest::default()
                .insert_header((header::ACCEPT_LANGUAGE, al))
                .to_http_request()
        };
        assert_eq!(Lang::of(&req("en-GB,en;q=0.9"), None), Lang::En);
        assert_eq!(Lang::of(&req("de,en;q=0.5,fr;q=0.8"), None), Lang::Fr);
        assert_eq!(Lang::of(&req("de"), None), Lang::Fr);
        assert_eq!(Lang::of(&req("en;q=0"), None), Lang::Fr);
        assert_eq!(Lang::of(&req("en"), Some("fr")), Lang::Fr);
        assert_eq!(Lang::of(&req("fr"), Some("xx")), Lang::Fr);
    }

    #[test]
    fn money_and_numbers_are_written_per_language() {
        assert_eq!(money(Lang::Fr, "EUR", 123456), "1\u{202f}234,56\u{a0}€");
        assert_eq!(money(Lang::En, "EUR", 123456), "€1,234.56");
        assert_eq!(money(Lang::En, "SEK", 5), "SEK\u{a0}0.05");
        assert_eq!(points(Lang::Fr, 1), "1\u{a0}point");
        assert_eq!(number(Lang::En, 1_000_000), "1,000,000");
    }

    #[test]
    fn stamp_cards_fill_their_stamps() {
        let s = stamp_card(10, 3, "3 of 10");
        assert_eq!(s.matches("<circle").count(), 10);
        assert_eq!(s.matches("stamp filled").count(), 3);
    }

    #[test]
    fn the_csp_allows_the_inline_style_only() {
        let c = csp("body{}");
        assert!(c.starts_with("default-src 'none'; style-src 'sha256-"));
        assert!(!c.contains("unsafe"));
    }
}
