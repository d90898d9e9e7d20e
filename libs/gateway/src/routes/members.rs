//! Members: enrolment at the till, lookup by phone or QR, the status shown at checkout (the
//! hot path), and the ledger for headquarters.

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::command::PosCommand;
use loyalty_core::identity::{member_id, qr_token};
use loyalty_core::input;
use loyalty_core::model::{Franchise, Principal, Role};
use loyalty_core::replies::ReplyResult;
use loyalty_domain::{Consent, EventId, MemberId, Outcome, Profile};
use serde::Deserialize;

use super::events::{envelope, input_error, submit_command, Submitted};
use super::{json_str, WaitQuery};
use crate::json::JsonObject;
use crate::limits::check_lookup;
use crate::problem::ApiError;
use crate::state::Gateway;

const MAX_LEDGER_PAGE: usize = 500;
/// The largest ledger cursor (`before`): `i64::MAX`, the bound of the document's `int64`.
const MAX_CURSOR: u64 = i64::MAX as u64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolBody {
    pub phone: String,
    pub name: Option<String>,
    /// `YYYY-MM-DD`.
    pub birthday: Option<String>,
    /// The channels the member agrees to receive offers on (none by default). An object only
    /// (serde's derived struct would also take an array of its fields).
    #[serde(default, deserialize_with = "loyalty_domain::object::option")]
    pub consent: Option<ConsentBody>,
    /// Where e-mail offers go (optional; a plausible address, its domain kept lowercase).
    #[serde(default)]
    pub email: Option<String>,
}

/// `{"sms": bool, "email": bool}`, each `false` when left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    #[serde(default)]
    pub sms: Option<bool>,
    #[serde(default)]
    pub email: Option<bool>,
}

/// The profile an enrolment body gives, validated (its consent `false` where left out).
pub fn validate_profile(body: EnrolBody) -> Result<Profile, ApiError> {
    let consent = body.consent.map_or_else(Consent::default, |c| Consent {
        sms: c.sms.unwrap_or(false),
        email: c.email.unwrap_or(false),
    });
    input::profile(&body.phone, body.name, body.birthday, consent)
        .and_then(|p| input::with_email(p, body.email.as_deref()))
        .map_err(input_error)
}

fn enrolment_body(member: &MemberId, qr: &str, created: bool, status: &[u8]) -> String {
    format!(
        r#"{{"member_id":{},"qr_token":{},"created":{created},"status":{}}}"#,
        json_str(member.as_str()),
        json_str(qr),
        String::from_utf8_lossy(status)
    )
}

/// What an enrolment became: the member, and `created` (`None` when the deadline passed and
/// the enrolment is durable but not yet applied: then there is no `status` yet either).
pub struct Enrolment {
    pub member: MemberId,
    pub qr: String,
    pub created: Option<bool>,
    pub status: Option<bytes::Bytes>,
}

/// Enrols `profile` in `franchise` on behalf of the store of `p` (its key at the till, or the
/// store whose enrolment QR code was scanned): the existing member for a known phone, else
/// one enrolment command through the log to the member's actor, awaited up to `deadline`.
pub async fn enrol_member(
    gw: &Gateway,
    franchise: &Franchise,
    p: &Principal,
    profile: Profile,
    deadline: Option<std::time::Duration>,
) -> Result<Enrolment, ApiError> {
    let member = member_id(&franchise.secret, &profile.phone);
    let qr = qr_token(&franchise.secret, &member);
    if let Some(s) = gw.member_status(franchise, &member).await? {
        // The phone of an erased member (README "Privacy"): its member id is retired.
        if super::privacy::status_is_erased(&s.json) {
            return Err(loyalty_domain::Rejection::MemberErased.into());
        }
        return Ok(Enrolment {
            member,
            qr,
            created: Some(false),
            status: Some(s.json),
        });
    }
    // One enrolment event per member: a second enrolment of the same phone is its replay.
    let event_id = EventId::parse(&format!("enrol.{member}"))?;
    let env = envelope(
        gw,
        franchise,
        p,
        event_id,
        None,
        PosCommand::Enrol {
            member_id: member.clone(),
            profile,
        },
    )?;
    let created = match submit_command(gw, &env, deadline).await? {
        Submitted::Accepted => {
            return Ok(Enrolment {
                member,
                qr,
                created: None,
                status: None,
            })
        }
        Submitted::AlreadyApplied(..) => false,
        Submitted::Replied(r) => match &r.result {
            ReplyResult::Applied(Outcome::Enrolled { created }) => *created,
            ReplyResult::Applied(Outcome::Rejected(rej)) => return Err(rej.clone().into()),
            _ => false,
        },
    };
    let status = gw
        .member_status(franchise, &member)
        .await?
        .ok_or_else(|| ApiError::Internal("enrolled member has no state".into()))?;
    Ok(Enrolment {
        member,
        qr,
        created: Some(created),
        status: Some(status.json),
    })
}

/// `POST /v1/members`: 201 for a new member, 200 with the existing one for a known phone.
pub async fn enrol(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    q: web::Query<WaitQuery>,
    body: JsonObject<EnrolBody>,
) -> Result<HttpResponse, ApiError> {
    let p = gw.authorize(&req, &[Role::Store]).await?;
    let deadline = q.deadline(Some(gw.config.default_wait))?;
    let franchise = gw.franchise_of(&p).await?;
    let profile = validate_profile(body.into_inner())?;
    let e = enrol_member(&gw, &franchise, &p, profile, deadline).await?;
    let (Some(created), Some(status)) = (e.created, e.status) else {
        return Ok(HttpResponse::Accepted().content_type("application/json").body(format!(
            r#"{{"member_id":{},"qr_token":{},"created":null,"status":null,"state":"accepted"}}"#,
            json_str(e.member.as_str()),
            json_str(&e.qr)
        )));
    };
    let body = enrolment_body(&e.member, &e.qr, created, &status);
    Ok(if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    }
    .content_type("application/json")
    .body(body))
}

/// `?phone=…` or `?qr=…`: exactly one, and nothing else (a `member_id` included: that is
/// `GET /v1/members/{member_id}`), as the OpenAPI document's `by` object says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    pub phone: Option<String>,
    pub qr: Option<String>,
}

/// `GET /v1/members/lookup?phone=…|qr=…`
pub async fn lookup(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    q: web::Query<LookupQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = gw
        .authorize(&req, &[Role::Store, Role::Hq, Role::HqReadOnly])
        .await?;
    // A QR token cannot be guessed (it carries a MAC); a phone number can.
    if q.phone.is_some() {
        check_lookup(&req, &p).await?;
    }
    let franchise = gw.franchise_of(&p).await?;
    if q.phone.is_none() && q.qr.is_none() {
        return Err(ApiError::Invalid("look a member up by phone or qr".into()));
    }
    let member = input::member_ref(&franchise.secret, None, q.phone.as_deref(), q.qr.as_deref())
        .map_err(input_error)?
        .ok_or_else(|| ApiError::Invalid("look a member up by phone or qr".into()))?;
    let status = gw
        .member_status(&franchise, &member)
        .await?
        // An erased member's phone or card is no one's any more (README "Privacy").
        .filter(|s| !super::privacy::status_is_erased(&s.json))
        .ok_or_else(ApiError::unknown_member)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(status.json))
}

/// `GET /v1/members/{member_id}`: the checkout hot path, served from the hot cache.
pub async fn status(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = gw
        .authorize(&req, &[Role::Store, Role::Hq, Role::HqReadOnly])
        .await?;
    let franchise = gw.franchise_of(&p).await?;
    let member = MemberId::parse(&path).map_err(|_| ApiError::unknown_member())?;
    let status = gw
        .member_status(&franchise, &member)
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(status.json))
}

#[derive(Debug, Deserialize)]
pub struct LedgerQuery {
    pub before: Option<u64>,
    pub limit: Option<usize>,
}

/// `GET /v1/members/{member_id}/ledger`: entries newest first, paged by `before` (a seq).
pub async fn ledger(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    q: web::Query<LedgerQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = gw.authorize(&req, &[Role::Hq, Role::HqReadOnly]).await?;
    let franchise = gw.franchise_of(&p).await?;
    let member = MemberId::parse(&path).map_err(|_| ApiError::unknown_member())?;
    gw.member_status(&franchise, &member)
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LEDGER_PAGE {
        return Err(ApiError::Invalid(format!(
            "limit must be 1 to {MAX_LEDGER_PAGE}"
        )));
    }
    // A cursor is a `seq` (the `next_before` of a page): an OpenAPI int64, like every integer
    // of the API, so a larger one is refused rather than read as "from the newest".
    if q.before.is_some_and(|b| b > MAX_CURSOR) {
        return Err(ApiError::Invalid(format!(
            "before must be 0 to {MAX_CURSOR}"
        )));
    }
    let entries = gw.store.ledger(&member, q.before, limit).await?;
    let next_before = if entries.len() == limit {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "member_id": member,
        "entries": entries,
        "next_before": next_before,
    })))
}
