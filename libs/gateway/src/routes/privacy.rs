//! A member's personal data for headquarters (README "Privacy"): everything the platform holds
//! about one member as one JSON document (export), and the erasure of the member's personal
//! data, which travels the log to the member's actor like every other command.

use actix_web::{web, HttpRequest, HttpResponse};
use loyalty_core::command::{CommandEnvelope, PosCommand, HQ_STORE};
use loyalty_core::model::{Franchise, Role};
use loyalty_core::ports::CachedStatus;
use loyalty_core::provisioning::now;
use loyalty_core::replies::ReplyResult;
use loyalty_domain::{EventId, LedgerEntry, MemberId, MemberStatus, Outcome, StoreId, Timestamp};
use serde_json::{json, Value};

use super::events::{submit_command, Submitted};
use super::{json_str, WaitQuery};
use crate::problem::ApiError;
use crate::state::Gateway;

/// Ledger entries read per page of the export (the store's `ledger` port, newest first).
const EXPORT_PAGE: usize = 500;

/// Whether a status served at the till (`MemberStatus` JSON, as rendered) is an erased
/// member's: `erased` is its last field and only present when true.
pub fn status_is_erased(status: &[u8]) -> bool {
    status.ends_with(br#","erased":true}"#)
}

/// The event id of the erasure of `member`: one per member, so that a second request (or a
/// redelivery) is a replay.
pub fn erasure_event_id(member: &MemberId) -> Result<EventId, ApiError> {
    Ok(EventId::parse(&format!("erase.{member}"))?)
}

fn rfc3339(t: Timestamp) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `GET /v1/members/{member_id}/export` (hq, hq_read_only): the profile, the state, the status,
/// the whole ledger (oldest first) and the franchise's program version, as an attachment that
/// no cache keeps. Read from the store (not the hot cache): the export is the store's truth.
pub async fn export(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let p = gw.authorize(&req, &[Role::Hq, Role::HqReadOnly]).await?;
    let franchise = gw.franchise_of(&p).await?;
    let member = MemberId::parse(&path).map_err(|_| ApiError::unknown_member())?;
    export_response(&gw, &franchise, &member).await
}

/// The export of `member` of `franchise` (404 for another franchise's or an unknown member),
/// as the HQ route and the member's card page ("My data") answer it.
pub async fn export_response(
    gw: &Gateway,
    franchise: &Franchise,
    member: &MemberId,
) -> Result<HttpResponse, ApiError> {
    let member = member.clone();
    let state = gw
        .store
        .member(&member)
        .await?
        .filter(|s| s.franchise_id == franchise.id)
        .ok_or_else(ApiError::unknown_member)?;
    let mut ledger: Vec<LedgerEntry> = Vec::new();
    let mut before = None;
    loop {
        let page = gw.store.ledger(&member, before, EXPORT_PAGE).await?;
        let full = page.len() == EXPORT_PAGE;
        before = page.last().map(|e| e.seq);
        ledger.extend(page);
        if !full || before.is_none_or(|b| b <= 1) {
            break;
        }
    }
    ledger.reverse();
    let program = gw.program(franchise).await?;
    let status = MemberStatus::of(&state, &program);
    let erased = state.erased_at.is_some();
    let profile = if erased {
        json!({ "phone": null, "name": null, "birthday": null, "consent": null, "email": null })
    } else {
        json!({
            "phone": state.profile.phone.as_str(),
            "name": state.profile.name,
            "birthday": state.profile.birthday,
            "consent": state.profile.consent,
            "email": state.profile.email,
        })
    };
    let mut rest = serde_json::to_value(&state).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(o) = rest.as_object_mut() {
        for k in [
            "member_id",
            "franchise_id",
            "profile",
            "enrolled_at",
            "enrolled_store",
            "erased_at",
        ] {
            o.remove(k);
        }
        o.entry("purchase_days").or_insert_with(|| json!({}));
    }
    let body = json!({
        "format": "loyalty-member-export/v1",
        "exported_at": rfc3339(now()),
        "member_id": member,
        "franchise": {
            "id": franchise.id,
            "name": franchise.name,
            "program_version": franchise.program_version,
        },
        "enrolled_at": state.enrolled_at,
        "enrolled_store": state.enrolled_store,
        "erased": erased,
        "erased_at": state.erased_at,
        "profile": profile,
        "state": rest,
        "status": status,
        "ledger": ledger,
    });
    // The member id only: what the document holds never goes to the log.
    tracing::info!(franchise = %franchise.id, member = %member, "member data exported");
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"member-{member}.json\""),
        ))
        .content_type("application/json")
        .body(body.to_string()))
}

/// `POST /v1/members/{member_id}/erasure` (hq): erases the member's personal data through the
/// log (event id `erase.<member>`), so that it is ordered with the member's other commands and
/// applied exactly once. 200 once applied (`replayed` for a second request), 202 if the
/// deadline passed first (it is applied regardless).
pub async fn erase(
    req: HttpRequest,
    gw: web::Data<Gateway>,
    path: web::Path<String>,
    q: web::Query<WaitQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = gw.authorize(&req, &[Role::Hq]).await?;
    let deadline = q.deadline(Some(gw.config.default_wait))?;
    let franchise = gw.franchise_of(&p).await?;
    let member = MemberId::parse(&path).map_err(|_| ApiError::unknown_member())?;
    let (event_id, replayed, erased_at, status) =
        match submit_erasure(&gw, &franchise, &member, deadline).await? {
            Erasure::Accepted { event_id } => {
                return Ok(HttpResponse::Accepted()
                    .content_type("application/json")
                    .body(format!(
                        r#"{{"member_id":{},"event_id":{},"status":"accepted"}}"#,
                        json_str(member.as_str()),
                        json_str(event_id.as_str())
                    )))
            }
            Erasure::Erased {
                event_id,
                replayed,
                erased_at,
                status,
            } => (event_id, replayed, erased_at, status),
        };
    let status = match status {
        Some(s) => Some(s),
        None => gw.member_status(&franchise, &member).await?,
    };
    let member_json: Value = status
        .and_then(|s| serde_json::from_slice(&s.json).ok())
        .unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(json!({
        "member_id": member,
        "event_id": event_id,
        "status": "erased",
        "replayed": replayed,
        "erased_at": erased_at,
        "member": member_json,
    })))
}

/// What became of an erasure command ([`submit_erasure`]).
pub enum Erasure {
    /// The deadline passed first: it is applied regardless.
    Accepted { event_id: EventId },
    /// Applied (`replayed`: by an earlier request), with the status the reply carried.
    Erased {
        event_id: EventId,
        replayed: bool,
        erased_at: Timestamp,
        status: Option<CachedStatus>,
    },
}

/// Sends the erasure of `member` of `franchise` through the log (404 for an unknown member),
/// with its reserved event id `erase.<member>`, and waits up to `deadline` for its reply: the
/// command of the HQ route and of the member's card page.
pub async fn submit_erasure(
    gw: &Gateway,
    franchise: &Franchise,
    member: &MemberId,
    deadline: Option<std::time::Duration>,
) -> Result<Erasure, ApiError> {
    gw.member_status(franchise, member)
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    let event_id = erasure_event_id(member)?;
    let env = CommandEnvelope {
        franchise_id: franchise.id.clone(),
        store_id: StoreId::parse(HQ_STORE)?,
        event_id: event_id.clone(),
        program_version: franchise.program_version,
        occurred_at: None,
        received_at: now(),
        request_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        reply_to: gw.config.reply_to.clone(),
        command: PosCommand::Erase {
            member_id: member.clone(),
        },
    };
    let (outcome, replayed, status) = match submit_command(gw, &env, deadline).await? {
        Submitted::Accepted => return Ok(Erasure::Accepted { event_id }),
        Submitted::AlreadyApplied(o, _) => (o, true, None),
        Submitted::Replied(r) => match &r.result {
            ReplyResult::Conflict => {
                return Err(ApiError::IdempotencyConflict(event_id.to_string()))
            }
            ReplyResult::Applied(o) => (o.clone(), false, r.status.clone()),
            ReplyResult::Replayed(o) => (o.clone(), true, r.status.clone()),
        },
    };
    match outcome {
        Outcome::Erased { erased_at } => Ok(Erasure::Erased {
            event_id,
            replayed,
            erased_at,
            status,
        }),
        Outcome::Rejected(r) => Err(r.into()),
        other => Err(ApiError::Internal(format!("an erasure answered {other:?}"))),
    }
}
