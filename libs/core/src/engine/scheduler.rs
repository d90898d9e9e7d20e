//! The scheduler: applies expiry and tier re-evaluation on time to members who send no event.
//!
//! Without it a lot expires, and a window day drops out of the tier window, only at the
//! member's next event, so a dormant member's status shows points and a tier they no longer
//! have. Each time the engine writes a member it also writes the member's due time
//! ([`loyalty_domain::MemberState::next_due`]: the earliest of the oldest lot's expiry and,
//! above the first tier, the day the oldest counted activity leaves the window) into the
//! store's due index, in the same commit as the state ([`crate::ports::MemberWrite::due`]),
//! keyed by the member's partition.
//!
//! Every partition worker (one per partition this node owns) runs the scheduler of its
//! partition every [`SchedulerConfig::every`], between its batches, on the worker's task, so
//! the member's single writer stays single: it reads the members due by the clock's now
//! ([`crate::ports::StateStore::due_members`]) and applies to each a time-only command
//! ([`PosCommand::Advance`] at the member's due time) through the shard's usual path:
//! idempotency by event id, the member's actor, one commit fenced by member versions that
//! also moves each member's due entry. Then the store is made durable and the statuses go to
//! the hot cache, as after any batch.
//!
//! Why this holds under crashes, restarts and several nodes:
//! - the event id is [`event_id`]`(member, due time)`, deterministic, so a run repeated by a
//!   restart, or by the partition's next owner, finds the event recorded and changes nothing;
//! - the due entry moves in the commit that applies the advance: a run that did not reach the
//!   store leaves the entry, and the next run (of this node or the next owner) does it. A
//!   crash before the store's sync rolls back the state and the entry together;
//! - a partition's scheduler runs only on the worker that owns the partition; a zombie's
//!   write fails the version fence like any other.
//!
//! Members that no write has indexed (stored before the due index existed), and due times that
//! a program change moves, are brought in line by the partition's re-index
//! ([`crate::engine::reindex`]), which the worker runs beside this scheduler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loyalty_domain::{EventId, FranchiseId, MemberId, Outcome, Program, StoreId, Timestamp};

use crate::command::{CommandEnvelope, PosCommand, HQ_STORE};
use crate::engine::shard::{BatchOutcome, Shard, ShardDeps};
use crate::metrics::metrics;
use crate::ports::{Clock, DueMember, SystemClock};
use crate::replies::ReplyResult;
use crate::{Error, Result};

/// Most pages of due members one run takes (each of [`SchedulerConfig::batch`] members):
/// the worker's records wait meanwhile, and what is left is the next run's.
const MAX_PAGES: usize = 16;

/// Settings of the scheduler of every owned partition.
#[derive(Clone)]
pub struct SchedulerConfig {
    /// Time between two runs of a partition's scheduler; zero turns it off.
    pub every: Duration,
    /// Most members one commit advances.
    pub batch: usize,
    /// What "now" is.
    pub clock: Arc<dyn Clock>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            every: Duration::from_secs(60),
            batch: 512,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("every", &self.every)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// The event id of the scheduler's advance of `member` to `at`: `sched:<member>:<ms>`, the
/// same on every run and every node.
pub fn event_id(member: &MemberId, at: Timestamp) -> Result<EventId> {
    EventId::parse(&format!("sched:{member}:{}", at.0))
        .map_err(|e| Error::Invalid(format!("scheduler event id: {e}")))
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Members read as due.
    pub due: usize,
    /// Members the run's advances changed.
    pub applied: usize,
    pub points_expired: u64,
}

/// Runs the scheduler of `shard`'s partition once: every member due by the clock's now, page
/// by page, until a page is short, changes nothing or [`MAX_PAGES`] are done.
pub async fn run_once(
    shard: &mut Shard,
    deps: &ShardDeps<'_>,
    config: &SchedulerConfig,
) -> Result<(RunReport, Vec<BatchOutcome>)> {
    let now = config.clock.now();
    let mut report = RunReport::default();
    let mut outcomes = Vec::new();
    let mut programs: HashMap<FranchiseId, Option<(u32, Arc<Program>)>> = HashMap::new();
    for _ in 0..MAX_PAGES {
        let due = deps
            .store
            .due_members(shard.partition, now, config.batch.max(1))
            .await?;
        let mut commands = Vec::with_capacity(due.len());
        for d in &due {
            if !programs.contains_key(&d.franchise_id) {
                let p = deps.programs.current_versioned(&d.franchise_id).await?;
                programs.insert(d.franchise_id.clone(), p);
            }
            // A franchise without its program was warned about; its members wait for it.
            if let Some(Some((version, program))) = programs.get(&d.franchise_id) {
                commands.push((envelope(d, *version, now)?, Arc::clone(program)));
            }
        }
        report.due += due.len();
        let outcome = shard.process_scheduled(deps, commands).await?;
        let page = count(&outcome);
        observe_lag(&due, now);
        report.applied += page.applied;
        report.points_expired += page.points_expired;
        outcomes.push(outcome);
        if due.len() < config.batch.max(1) || page.applied == 0 {
            break;
        }
    }
    Ok((report, outcomes))
}

/// The advance of a due member, as the shard applies it.
fn envelope(d: &DueMember, program_version: u32, now: Timestamp) -> Result<CommandEnvelope> {
    Ok(CommandEnvelope {
        franchise_id: d.franchise_id.clone(),
        store_id: StoreId::parse(HQ_STORE).map_err(|e| Error::Invalid(e.to_string()))?,
        event_id: event_id(&d.member_id, d.at)?,
        program_version,
        occurred_at: Some(d.at),
        received_at: now,
        request_id: None,
        reply_to: None,
        command: PosCommand::Advance {
            member_id: d.member_id.clone(),
        },
    })
}

/// Members changed and points expired by one commit of advances (replays count nothing).
fn count(outcome: &BatchOutcome) -> RunReport {
    let mut r = RunReport {
        applied: outcome.changed_members,
        ..RunReport::default()
    };
    for reply in &outcome.replies {
        if let ReplyResult::Applied(Outcome::Advanced { points_expired, .. }) = &reply.result {
            r.points_expired = r.points_expired.saturating_add(*points_expired);
        }
    }
    r
}

fn observe_lag(due: &[DueMember], now: Timestamp) {
    let h = &metrics().scheduler.due_lag_seconds;
    for d in due {
        h.observe((now.0 - d.at.0).max(0) as f64 / 1000.0);
    }
}
