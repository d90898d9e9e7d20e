//! POS events: purchases (and anonymous sales), refunds, redemptions and their cancellations.
//!
//! Each is validated and resolved here, stamped with the franchise's current program version,
//! and appended to the log keyed by the member, so the member's single writer applies it. The
//! answer is 202 once the log has it durably; with a deadline (`wait_ms`, or always for
//! redemptions) the handler awaits the engine's reply and answers 200 with the effect and the new
//! status, or still 202 if the deadline passes (the event is applied exactly once regardless).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::command::{CommandEnvelope, PosCommand};
use loyalty_core::identity;
use loyalty_core::input::{self, InputError};
use loyalty_core::metrics::metrics;
use loyalty_core::model::{Franchise, Principal, Role};
use loyalty_core::provisioning::now;
use loyalty_core::replies::{EventReply, ReplyResult};
use loyalty_domain::{
    Cents, Currency, EventId, MemberId, Outcome, PurchaseItemSpec, Rejection, RewardId, Timestamp,
};
use serde::Deserialize;

use super::{json_str, WaitQuery};
use crate::json::JsonObject;
use crate::problem::ApiError;
use crate::state::Gateway;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    pub event_id: EventId,
    pub member_id: Option<String>,
    pub phone: Option<String>,
    pub qr: Option<String>,
    pub amount_cents: Cents,
    pub currency: Currency,
    pub occurred_at: Option<String>,
    /// Line items, for the program's item bonuses (README "Item bonuses").
    #[serde(default, deserialize_with = "loyalty_domain::items::item_specs")]
    pub items: Option<Vec<PurchaseItemSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub event_id: EventId,
    pub purchase_event_id: EventId,
    /// Absent or null: a void, all that is left of the purchase.
    pub amount_cents: Option<Cents>,
    pub occurred_at: Option<String>,
    /// The member (at most one of the three), needed only for a purchase not applied yet
    /// (an offline till's): the refund is then held for it.
    pub member_id: Option<String>,
    pub phone: Option<String>,
    pub qr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedemptionBody {
    pub event_id: EventId,
    pub member_id: MemberId,
    pub reward_id: RewardId,
    pub occurred_at: Option<String>,
    /// Issue a single-use code instead of handing the reward over now (README "Redemption
    /// codes"). Absent or false: today's redemption, with the same fingerprint as before.
    #[serde(default)]
    pub as_code: bool,
}

/// The longest `code` a till may send (a real one is at most 77 characters).
const MAX_CODE_CHARS: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeCodeBody {
    pub event_id: EventId,
    pub code: String,
    pub occurred_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancellationBody {
    pub event_id: EventId,
    pub redemption_event_id: EventId,
    pub occurred_at: Option<String>,
}

/// Input refused by the shared validation ([`loyalty_core::input`]), as a problem.
pub fn input_error(e: InputError) -> ApiError {
    match e {
        InputError::Invalid(detail) => ApiError::Invalid(detail),
        InputError::UnknownMember => ApiError::unknown_member(),
    }
}

fn occurred_at(s: &Option<String>) -> Result<Option<Timestamp>, ApiError> {
    input::occurred_at_opt(s.as_deref(), now()).map_err(input_error)
}

/// The preamble of every till command: the caller is a store's key, the request's deadline
/// (`wait_ms`, else `default_wait`) is valid, and the store's franchise.
async fn till_request(
    gw: &Gateway,
    req: &HttpRequest,
    q: &WaitQuery,
    default_wait: Option<Duration>,
) -> Result<(Principal, Option<Duration>, Arc<Franchise>), ApiError> {
    let p = gw.authorize(req, &[Role::Store]).await?;
    let deadline = q.deadline(default_wait)?;
    let franchise = gw.franchise_of(&p).await?;
    Ok((p, deadline, franchise))
}

pub async fn purchase(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    q: web::Query<WaitQuery>,
    body: JsonObject<PurchaseBody>,
) -> Result<HttpResponse, ApiError> {
    let (p, deadline, franchise) = till_request(&gw, &req, &q, None).await?;
    let body = body.into_inner();
    let program = gw.program(&franchise).await?;
    input::purchase_currency(&program, &body.currency)?;
    let items =
        input::purchase_items(body.items.as_deref(), body.amount_cents).map_err(input_error)?;
    let member = input::member_ref(
        &franchise.secret,
        body.member_id.as_deref(),
        body.phone.as_deref(),
        body.qr.as_deref(),
    )
    .map_err(input_error)?;
    // The member must be enrolled in this franchise, and not erased.
    if let Some(m) = &member {
        let status = gw
            .member_status(&franchise, m)
            .await?
            .ok_or_else(ApiError::unknown_member)?;
        refuse_erased(&status)?;
    }
    let env = client_envelope(
        &gw,
        &franchise,
        &p,
        body.event_id,
        occurred_at(&body.occurred_at)?,
        PosCommand::Purchase {
            member_id: member,
            amount_cents: body.amount_cents,
            currency: body.currency,
            items,
        },
    )?;
    submit(&gw, &franchise, env, deadline).await
}

pub async fn refund(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    q: web::Query<WaitQuery>,
    body: JsonObject<RefundBody>,
) -> Result<HttpResponse, ApiError> {
    let (p, deadline, franchise) = till_request(&gw, &req, &q, None).await?;
    let body = body.into_inner();
    if let Some(amount) = body.amount_cents {
        input::refund_amount(amount).map_err(input_error)?;
    }
    let occurred_at = occurred_at(&body.occurred_at)?;
    let named = input::member_ref(
        &franchise.secret,
        body.member_id.as_deref(),
        body.phone.as_deref(),
        body.qr.as_deref(),
    )
    .map_err(input_error)?;
    let member = refund_member(&gw, &franchise, &body.purchase_event_id, named).await?;
    let env = client_envelope(
        &gw,
        &franchise,
        &p,
        body.event_id,
        occurred_at,
        PosCommand::Refund {
            member_id: Some(member),
            purchase_event_id: body.purchase_event_id,
            amount_cents: body.amount_cents,
        },
    )?;
    submit(&gw, &franchise, env, deadline).await
}

/// The member a refund of `purchase` is for: the purchase's member if it is applied (the
/// member named, if any, must be that one), else the member named, whose actor holds the
/// refund until the purchase arrives (README "Refunds and voids"). Refused: a purchase not
/// applied with no member named, an event that is not a member purchase, an anonymous sale,
/// a member not enrolled or erased.
async fn refund_member(
    gw: &Gateway,
    franchise: &Franchise,
    purchase: &EventId,
    named: Option<MemberId>,
) -> Result<MemberId, ApiError> {
    let recorded = gw
        .store
        .processed(&franchise.id, std::slice::from_ref(purchase))
        .await?
        .into_iter()
        .next()
        .flatten();
    let unknown = || -> ApiError {
        Rejection::UnknownPurchase {
            purchase_event_id: purchase.clone(),
        }
        .into()
    };
    let member = match (recorded, named) {
        (Some(rec), named) => match (rec.outcome, rec.member_id) {
            (Outcome::AnonymousSale { .. }, _) => return Err(ApiError::AnonymousRefund),
            (Outcome::Purchase(_), Some(m)) if named.as_ref().is_none_or(|n| *n == m) => m,
            _ => return Err(unknown()),
        },
        (None, Some(m)) => m,
        (None, None) => return Err(unknown()),
    };
    match gw.member_status(franchise, &member).await? {
        Some(status) => refuse_erased(&status)?,
        None => return Err(ApiError::unknown_member()),
    }
    Ok(member)
}

pub async fn redemption(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    q: web::Query<WaitQuery>,
    body: JsonObject<RedemptionBody>,
) -> Result<HttpResponse, ApiError> {
    let (p, deadline, franchise) =
        till_request(&gw, &req, &q, Some(gw.config.default_wait)).await?;
    let body = body.into_inner();
    let program = gw.program(&franchise).await?;
    // The member must be enrolled in this franchise (the id is already validated).
    let status = gw
        .member_status(&franchise, &body.member_id)
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    refuse_erased(&status)?;
    if body.as_code && program.redemption_codes.is_none() {
        return Err(Rejection::RedemptionCodesNotOffered.into());
    }
    // A reward that left the catalogue is still redeemed with a voucher issued before
    // (`MemberState::redeem`); without one it is unknown. The status is read only then.
    if let Err(unknown) = input::reward(&program, &body.reward_id) {
        if !holds_voucher(&status.json, &body.reward_id) {
            return Err(unknown.into());
        }
    }
    // The code is the event's: the same on every resend, so a resend is a replay.
    let code = body
        .as_code
        .then(|| identity::redemption_code(&franchise.secret, &body.member_id, &body.event_id));
    let env = client_envelope(
        &gw,
        &franchise,
        &p,
        body.event_id,
        occurred_at(&body.occurred_at)?,
        PosCommand::Redemption {
            member_id: body.member_id,
            reward_id: body.reward_id,
            code,
        },
    )?;
    submit(&gw, &franchise, env, deadline).await
}

/// Uses a redemption code at the till (README "Redemption codes"): the code names its member,
/// whose actor hands the reward over once, before the code's expiry. A code without a code's
/// shape, or naming no member of this franchise (or an erased one), is `unknown-code`, as a
/// forged code of a real member is (told by the member's actor): nothing about any member is
/// revealed. Awaited like a redemption.
pub async fn consume_code(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    q: web::Query<WaitQuery>,
    body: JsonObject<ConsumeCodeBody>,
) -> Result<HttpResponse, ApiError> {
    let (p, deadline, franchise) =
        till_request(&gw, &req, &q, Some(gw.config.default_wait)).await?;
    let body = body.into_inner();
    let occurred_at = occurred_at(&body.occurred_at)?;
    if body.code.chars().count() > MAX_CODE_CHARS {
        return Err(ApiError::Invalid(format!(
            "code: at most {MAX_CODE_CHARS} characters"
        )));
    }
    let unknown = || ApiError::from(Rejection::UnknownCode);
    let (member, code) = identity::parse_redemption_code(&body.code).ok_or_else(unknown)?;
    let status = gw
        .member_status(&franchise, &member)
        .await?
        .ok_or_else(unknown)?;
    if super::privacy::status_is_erased(&status.json) {
        return Err(unknown());
    }
    let env = client_envelope(
        &gw,
        &franchise,
        &p,
        body.event_id,
        occurred_at,
        PosCommand::ConsumeCode {
            member_id: member,
            code,
        },
    )?;
    submit(&gw, &franchise, env, deadline).await
}

/// Cancels a redemption of this franchise within the program's window (README "Rewards"): the
/// redemption's record names its member, and the cancellation travels the log to that member's
/// actor like every command, which gives back what the redemption took, once. Awaited like a
/// redemption.
pub async fn cancel_redemption(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    q: web::Query<WaitQuery>,
    body: JsonObject<CancellationBody>,
) -> Result<HttpResponse, ApiError> {
    let (p, deadline, franchise) =
        till_request(&gw, &req, &q, Some(gw.config.default_wait)).await?;
    let body = body.into_inner();
    let occurred_at = occurred_at(&body.occurred_at)?;
    let redemption = gw
        .store
        .processed(
            &franchise.id,
            std::slice::from_ref(&body.redemption_event_id),
        )
        .await?
        .into_iter()
        .next()
        .flatten();
    let member = redemption
        .filter(|rec| matches!(rec.outcome, Outcome::Redemption { .. }))
        .and_then(|rec| rec.member_id)
        .ok_or_else(|| Rejection::UnknownRedemption {
            redemption_event_id: body.redemption_event_id.clone(),
        })?;
    if let Some(status) = gw.member_status(&franchise, &member).await? {
        refuse_erased(&status)?;
    }
    let env = client_envelope(
        &gw,
        &franchise,
        &p,
        body.event_id,
        occurred_at,
        PosCommand::CancelRedemption {
            member_id: member,
            redemption_event_id: body.redemption_event_id,
        },
    )?;
    submit(&gw, &franchise, env, deadline).await
}

/// An erased member takes no more commands (README "Privacy"): refused before the log, as the
/// member's actor would (`Rejection::MemberErased`).
fn refuse_erased(status: &loyalty_core::ports::CachedStatus) -> Result<(), ApiError> {
    if super::privacy::status_is_erased(&status.json) {
        Err(Rejection::MemberErased.into())
    } else {
        Ok(())
    }
}

/// Whether the status served at the till (`MemberStatus` JSON) lists a voucher for `reward`.
fn holds_voucher(status: &[u8], reward: &RewardId) -> bool {
    serde_json::from_slice::<loyalty_domain::MemberStatus>(status).is_ok_and(|s| {
        s.vouchers
            .iter()
            .any(|v| v.reward_id == *reward && v.count > 0)
    })
}

/// The envelope of a till's command: [`envelope`], its event id the client's (not one of the
/// platform's own, `loyalty_core::input::RESERVED_EVENT_ID_PREFIXES`).
fn client_envelope(
    gw: &Gateway,
    franchise: &Franchise,
    p: &loyalty_core::model::Principal,
    event_id: EventId,
    occurred_at: Option<Timestamp>,
    command: PosCommand,
) -> Result<CommandEnvelope, ApiError> {
    input::client_event_id("event_id", &event_id).map_err(input_error)?;
    envelope(gw, franchise, p, event_id, occurred_at, command)
}

/// The envelope of a command from the store key `p`.
pub fn envelope(
    gw: &Gateway,
    franchise: &Franchise,
    p: &loyalty_core::model::Principal,
    event_id: EventId,
    occurred_at: Option<Timestamp>,
    command: PosCommand,
) -> Result<CommandEnvelope, ApiError> {
    let store_id = p
        .store_id
        .clone()
        .ok_or(ApiError::Forbidden("only a store key can send POS events"))?;
    Ok(CommandEnvelope {
        franchise_id: franchise.id.clone(),
        store_id,
        event_id,
        program_version: franchise.program_version,
        occurred_at,
        received_at: now(),
        request_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        reply_to: gw.config.reply_to.clone(),
        command,
    })
}

/// What became of a submitted command.
pub enum Submitted {
    /// Durable in the log; the deadline (if any) passed before the engine answered.
    Accepted,
    /// The engine's answer.
    Replied(Arc<EventReply>),
    /// Already applied before this request: its recorded outcome.
    AlreadyApplied(Outcome, Option<MemberId>),
}

/// Appends `env` (unless its id is already recorded) and waits up to `deadline` for the reply.
pub async fn submit_command(
    gw: &Gateway,
    env: &CommandEnvelope,
    deadline: Option<Duration>,
) -> Result<Submitted, ApiError> {
    let fp = env.fingerprint();
    // Replays of applied events are answered from the record, without touching the log.
    if let Some(rec) = gw
        .store
        .processed(&env.franchise_id, std::slice::from_ref(&env.event_id))
        .await?
        .into_iter()
        .next()
        .flatten()
    {
        if rec.fingerprint != fp {
            metrics().idempotency_conflicts.inc();
            return Err(ApiError::IdempotencyConflict(env.event_id.to_string()));
        }
        metrics().events_replayed.inc();
        return Ok(Submitted::AlreadyApplied(rec.outcome, rec.member_id));
    }
    let payload = env.encode(&gw.config.keys)?;
    // Register before appending, or the reply could come first.
    let waiter = deadline.map(|_| gw.replies.register(&env.franchise_id, &env.event_id, fp));
    let timer = metrics().log_append_seconds.start_timer();
    gw.log
        .append(&gw.config.topic, &env.key(), payload, Vec::new())
        .await?;
    timer.observe_duration();
    let (Some(waiter), Some(deadline)) = (waiter, deadline) else {
        return Ok(Submitted::Accepted);
    };
    match waiter.wait(deadline).await {
        // Another request carried the same event and was applied first: for this request
        // it is a replay.
        Some(reply) if reply.request_id != env.request_id => match &reply.result {
            ReplyResult::Applied(o) | ReplyResult::Replayed(o) => Ok(Submitted::AlreadyApplied(
                o.clone(),
                env.command.member_id().cloned(),
            )),
            ReplyResult::Conflict => Ok(Submitted::Replied(reply)),
        },
        Some(reply) => Ok(Submitted::Replied(reply)),
        None => {
            metrics().reply_timeouts.inc();
            Ok(Submitted::Accepted)
        }
    }
}

async fn submit(
    gw: &Gateway,
    franchise: &Franchise,
    env: CommandEnvelope,
    deadline: Option<Duration>,
) -> Result<HttpResponse, ApiError> {
    let event_id = env.event_id.clone();
    let member = env.command.member_id().cloned();
    match submit_command(gw, &env, deadline).await? {
        Submitted::Accepted => Ok(accepted(&event_id)),
        Submitted::AlreadyApplied(outcome, member) => {
            applied(
                gw,
                franchise,
                &event_id,
                outcome,
                true,
                member.as_ref(),
                None,
            )
            .await
        }
        Submitted::Replied(reply) => match &reply.result {
            ReplyResult::Conflict => Err(ApiError::IdempotencyConflict(event_id.to_string())),
            ReplyResult::Applied(o) => {
                applied(
                    gw,
                    franchise,
                    &event_id,
                    o.clone(),
                    false,
                    member.as_ref(),
                    reply.status.as_ref(),
                )
                .await
            }
            ReplyResult::Replayed(o) => {
                applied(
                    gw,
                    franchise,
                    &event_id,
                    o.clone(),
                    true,
                    member.as_ref(),
                    reply.status.as_ref(),
                )
                .await
            }
        },
    }
}

/// 202: durable in the log, not applied yet.
pub fn accepted(event_id: &EventId) -> HttpResponse {
    HttpResponse::Accepted()
        .content_type("application/json")
        .body(format!(
            r#"{{"event_id":{},"status":"accepted"}}"#,
            json_str(event_id.as_str())
        ))
}

/// 200 with the effect and the member's new status; a rejection becomes its problem.
async fn applied(
    gw: &Gateway,
    franchise: &Franchise,
    event_id: &EventId,
    outcome: Outcome,
    replayed: bool,
    member: Option<&MemberId>,
    status: Option<&loyalty_core::ports::CachedStatus>,
) -> Result<HttpResponse, ApiError> {
    if let Outcome::Rejected(r) = outcome {
        return Err(r.into());
    }
    let status = match (status, member) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(m)) => gw.member_status(franchise, m).await?,
        (None, None) => None,
    };
    let member_json = status
        .as_ref()
        .map(|s| String::from_utf8_lossy(&s.json).into_owned())
        .unwrap_or_else(|| "null".into());
    let outcome_json =
        serde_json::to_string(&outcome).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().content_type("application/json").body(format!(
        r#"{{"event_id":{},"status":"applied","replayed":{replayed},"outcome":{outcome_json},"member":{member_json}}}"#,
        json_str(event_id.as_str())
    )))
}
