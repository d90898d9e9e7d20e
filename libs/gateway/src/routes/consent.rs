//! Consent to offers after enrolment (README "Privacy"): `PUT /v1/members/{member_id}/consent`
//! for tills and headquarters, and [`submit_consent`], which the member's own pages (the
//! opt-out link, the card page) share. A change travels the log to the member's actor like
//! every command, so it is ordered with the member's other events and applied exactly once.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::command::{CommandEnvelope, PosCommand, HQ_STORE};
use loyalty_core::input;
use loyalty_core::metrics::metrics;
use loyalty_core::model::{Franchise, Role};
use loyalty_core::provisioning::now;
use loyalty_core::replies::ReplyResult;
use loyalty_domain::{Consent, EmailAddress, EventId, MemberId, Outcome, StoreId};
use serde::Deserialize;
use serde_json::json;

use super::events::{input_error, submit_command, Submitted};
use super::WaitQuery;
use crate::json::JsonObject;
use crate::problem::ApiError;
use crate::state::Gateway;

/// `{"event_id": …, "sms": bool?, "email": bool?, "email_address": string?}`: a channel left
/// out (or null) stays as it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    pub event_id: EventId,
    #[serde(default)]
    pub sms: Option<bool>,
    #[serde(default)]
    pub email: Option<bool>,
    /// The member's new e-mail address (validated like an enrolment's).
    #[serde(default)]
    pub email_address: Option<String>,
}

/// What became of a change of consent.
pub enum ConsentSubmitted {
    /// Applied (now or before: `replayed`); the consent the member now holds.
    Applied { consent: Consent, replayed: bool },
    /// Durable in the log, not applied within the deadline (it will be, once).
    Accepted,
}

/// One change of `member`'s consent, as the store `store` (a till's, or [`HQ_STORE`]) sends it.
pub struct ConsentChange {
    pub store: StoreId,
    pub event_id: EventId,
    pub sms: Option<bool>,
    pub email: Option<bool>,
    pub email_address: Option<EmailAddress>,
}

/// Sends `change` for `member` of `franchise` through the log and awaits its reply up to
/// `deadline`. A refusal of the member's actor (erased member, e-mail consent without an
/// address) is its problem; the same event id with other content is a conflict.
pub async fn submit_consent(
    gw: &Gateway,
    franchise: &Franchise,
    member: &MemberId,
    change: ConsentChange,
    deadline: Option<Duration>,
) -> Result<ConsentSubmitted, ApiError> {
    let event_id = change.event_id.clone();
    let env = CommandEnvelope {
        franchise_id: franchise.id.clone(),
        store_id: change.store,
        event_id: change.event_id,
        program_version: franchise.program_version,
        occurred_at: None,
        received_at: now(),
        request_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        reply_to: gw.config.reply_to.clone(),
        command: PosCommand::SetConsent {
            member_id: member.clone(),
            sms: change.sms,
            email: change.email,
            email_address: change.email_address,
        },
    };
    let (outcome, replayed) = match submit_command(gw, &env, deadline).await? {
        Submitted::Accepted => return Ok(ConsentSubmitted::Accepted),
        Submitted::AlreadyApplied(o, _) => (o, true),
        Submitted::Replied(r) => match &r.result {
            ReplyResult::Conflict => {
                return Err(ApiError::IdempotencyConflict(event_id.to_string()))
            }
            ReplyResult::Applied(o) => (o.clone(), false),
            ReplyResult::Replayed(o) => (o.clone(), true),
        },
    };
    match outcome {
        Outcome::ConsentChanged { consent } => Ok(ConsentSubmitted::Applied { consent, replayed }),
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ApiError::Internal(format!(
            "a change of consent answered {other:?}"
        ))),
    }
}

/// `PUT /v1/members/{member_id}/consent` (store, hq): changes the member's consent per channel
/// (and, optionally, the e-mail address), idempotent by the client's event id. 200 with the
/// consent now held (`replayed` for a resend), 202 if the deadline passed first.
pub async fn put(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    q: web::Query<WaitQuery>,
    body: JsonObject<ConsentBody>,
) -> Result<HttpResponse, ApiError> {
    let p = gw.authorize(&req, &[Role::Store, Role::Hq]).await?;
    let deadline = q.deadline(Some(gw.config.default_wait))?;
    let franchise = gw.franchise_of(&p).await?;
    let member = MemberId::parse(&path).map_err(|_| ApiError::unknown_member())?;
    let body = body.into_inner();
    input::client_event_id("event_id", &body.event_id).map_err(input_error)?;
    let email_address = input::email(body.email_address.as_deref()).map_err(input_error)?;
    let status = gw
        .member_status(&franchise, &member)
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    if super::privacy::status_is_erased(&status.json) {
        return Err(loyalty_domain::Rejection::MemberErased.into());
    }
    let store = match p.store_id {
        Some(s) => s,
        None => StoreId::parse(HQ_STORE)?,
    };
    let change = ConsentChange {
        store,
        event_id: body.event_id.clone(),
        sms: body.sms,
        email: body.email,
        email_address,
    };
    let base = json!({ "member_id": member, "event_id": body.event_id });
    let mut out = base.as_object().cloned().unwrap_or_default();
    match submit_consent(&gw, &franchise, &member, change, deadline).await? {
        ConsentSubmitted::Accepted => {
            out.insert("status".into(), "accepted".into());
            Ok(HttpResponse::Accepted().json(out))
        }
        ConsentSubmitted::Applied { consent, replayed } => {
            if !replayed {
                metrics().consent_changes.with_label_values(&["api"]).inc();
            }
            tracing::info!(franchise = %franchise.id, replayed, "consent changed through the API");
            out.insert("status".into(), "applied".into());
            out.insert("replayed".into(), replayed.into());
            out.insert("consent".into(), json!(consent));
            Ok(HttpResponse::Ok().json(out))
        }
    }
}
