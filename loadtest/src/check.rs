//! The end-of-run correctness check: every purchase answered 2xx is reflected exactly once in
//! its member's points.
//!
//! Requests whose outcome is unknown (202, 5xx, transport error) are resent with the same event
//! id and body and `wait_ms=5000` until answered: a replay answers the original outcome, a
//! request that never arrived is applied now. Then every touched member's points must equal the
//! baseline read before the run plus what the generator computed: the points of each purchase,
//! `floor(amount × points_per_unit × 100 / 10000)` (every tier at multiplier 100), minus the
//! `points_spent` of each redemption. Members enrolled by the run must hold the signup bonus.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

use crate::model::Op;
use crate::run::{lock, read_points, Pending, PendingKind, Settled, Shared};

/// What the check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub passed: bool,
    /// Requests resent because their outcome was unknown.
    pub resent: usize,
    /// Of which still unknown (or answered an unexpected error) at the end.
    pub unresolved: Vec<String>,
    pub members_checked: usize,
    pub mismatches: Vec<Mismatch>,
    /// Purchases answered 200 whose `points_earned` was not the generator's figure.
    pub earn_mismatches: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub member_id: String,
    pub expected: i64,
    /// `None`: the status could not be read.
    pub actual: Option<i64>,
}

pub(crate) async fn check(shared: &Shared, baseline: &[i64], timeout: Duration) -> CheckReport {
    let pending: Vec<Pending> = std::mem::take(&mut *lock(&shared.pending));
    let resent = pending.len();
    let deadline = Instant::now() + timeout;
    let failed: Vec<(String, String)> = stream::iter(pending)
        .map(|p| async move { resolve(shared, p, deadline).await })
        .buffer_unordered(32)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;

    // Members with an outcome still unknown cannot be checked (the check fails anyway).
    let unknown: std::collections::HashSet<&str> =
        failed.iter().map(|(who, _)| who.as_str()).collect();
    let mut targets: Vec<(String, i64)> = shared
        .touched
        .iter()
        .enumerate()
        .filter(|(_, t)| t.load(Ordering::Relaxed))
        .map(|(i, _)| {
            (
                shared.state.members[i].id.clone(),
                baseline[i] + shared.delta[i].load(Ordering::Relaxed),
            )
        })
        .collect();
    targets.extend(
        lock(&shared.enrolled)
            .iter()
            .map(|id| (id.clone(), shared.state.signup_bonus)),
    );
    targets.retain(|(id, _)| !unknown.contains(id.as_str()));
    let unresolved: Vec<String> = failed.iter().map(|(_, what)| what.clone()).collect();
    let key = shared.state.stores[0].api_key.clone();
    let members_checked = targets.len();
    let mut mismatches: Vec<Mismatch> = stream::iter(targets)
        .map(|(id, expected)| {
            let key = key.clone();
            async move {
                let actual = read_points(&shared.api, &key, &id).await.ok();
                (actual != Some(expected)).then_some(Mismatch {
                    member_id: id,
                    expected,
                    actual,
                })
            }
        })
        .buffer_unordered(32)
        .filter_map(|m| async move { m })
        .collect()
        .await;
    mismatches.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    let earn_mismatches = shared.earn_mismatches.load(Ordering::Relaxed);
    CheckReport {
        passed: unresolved.is_empty() && mismatches.is_empty() && earn_mismatches == 0,
        resent,
        unresolved,
        members_checked,
        mismatches,
        earn_mismatches,
    }
}

/// Resends `p` until its outcome is known; `Err` names the member (or event) and the last
/// answer: `(member id or phone, what happened)`.
async fn resolve(shared: &Shared, p: Pending, deadline: Instant) -> Result<(), (String, String)> {
    let path = format!("{}?wait_ms=5000", p.path);
    let key = shared.state.stores[p.store % shared.state.stores.len()]
        .api_key
        .clone();
    let (op, who) = match p.kind {
        PendingKind::Purchase { member, .. } => {
            (Op::Purchase, shared.state.members[member].id.clone())
        }
        PendingKind::Redeem { member } => (Op::Redeem, shared.state.members[member].id.clone()),
        PendingKind::Enrol => (
            Op::Enrol,
            p.body
                .get("phone")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned(),
        ),
    };
    let mut attempt = 0u64;
    loop {
        let a = shared.api.post(&path, &key, &p.body).await;
        let status = a.status();
        let answered = matches!(status, Some(200 | 201 | 203..=299 | 400..=499));
        if answered {
            // Known: account for it like a first answer (a 2xx updates the expectation).
            let settled = shared.settle(op, &a, Some(p.clone()));
            return match settled {
                Settled::Ok | Settled::Rejected => Ok(()),
                Settled::Accepted | Settled::Error => {
                    let event = p.body.get("event_id").and_then(|v| v.as_str());
                    let what = format!(
                        "{who} {op} {}: resend answered {}",
                        event.unwrap_or(""),
                        a.kind()
                    );
                    Err((who, what))
                }
            };
        }
        if Instant::now() >= deadline {
            let what = format!("{who} {op}: still {} at the deadline", a.kind());
            return Err((who, what));
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis((50 * attempt).min(1000))).await;
    }
}
